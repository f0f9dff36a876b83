-- +goose Up
-- Each app's service address (<app>.internal) is the n-th address of the
-- service subnet; it is kept for the app's life.
CREATE TABLE services (
    app TEXT PRIMARY KEY REFERENCES apps(name) ON DELETE CASCADE,
    n   INTEGER NOT NULL UNIQUE
);

-- +goose Down
DROP TABLE services;
