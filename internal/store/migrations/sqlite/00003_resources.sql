-- +goose Up
-- Resources: typed infrastructure (postgres, redis, bucket). admin_sealed
-- holds the driver's admin credentials, encrypted with the keyring.
CREATE TABLE resources (
    name         TEXT PRIMARY KEY,
    type         TEXT NOT NULL,
    params       TEXT NOT NULL,        -- validated parameters as JSON
    managed      INTEGER NOT NULL,
    port         INTEGER NOT NULL,
    status       TEXT NOT NULL,        -- creating, ready, deleting
    admin_key_id TEXT NOT NULL DEFAULT '',
    admin_sealed BLOB,
    created_at   TEXT NOT NULL
);

-- Connections: app -> resource edges with their credentials, encrypted.
-- A connection being removed is kept as 'revoking' until its credentials
-- are revoked, so a crash in between cannot leave working credentials
-- nobody knows about.
CREATE TABLE connections (
    app        TEXT NOT NULL,
    target     TEXT NOT NULL,
    kind       TEXT NOT NULL,          -- resource
    access     TEXT NOT NULL,
    as_name    TEXT NOT NULL,
    status     TEXT NOT NULL,          -- active, revoking
    key_id     TEXT NOT NULL DEFAULT '',
    sealed     BLOB,
    created_at TEXT NOT NULL,
    PRIMARY KEY (app, target)
);
CREATE INDEX connections_target ON connections(target);

CREATE TABLE backups (
    id         TEXT PRIMARY KEY,
    resource   TEXT NOT NULL,
    size       INTEGER NOT NULL,
    trigger    TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX backups_resource ON backups(resource, created_at);

-- +goose Down
DROP TABLE backups;
DROP TABLE connections;
DROP TABLE resources;
