-- +goose Up
-- Custom domains of apps. The edge routes each to its app and obtains a
-- certificate for it; the certificates and keys themselves live in
-- certmagic's storage under the data dir, not here.
CREATE TABLE certs (
    domain     TEXT PRIMARY KEY,
    app        TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    created_at TEXT NOT NULL
);
CREATE INDEX certs_app ON certs(app);

-- +goose Down
DROP TABLE certs;
