-- +goose Up
-- Machines created through the machines API (apps' release machines are
-- the supervisor's and live in the machines table).
CREATE TABLE api_machines (
    id         TEXT PRIMARY KEY,
    app        TEXT NOT NULL,
    doc        TEXT NOT NULL, -- the machine as JSON: config, state, metadata, events
    updated_at TEXT NOT NULL
);
CREATE INDEX api_machines_app ON api_machines(app);

-- +goose Down
DROP TABLE api_machines;
