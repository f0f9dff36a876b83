-- +goose Up
CREATE TABLE apps (
    name       TEXT PRIMARY KEY,
    count      INTEGER NOT NULL DEFAULT 1,
    release    INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);

CREATE TABLE releases (
    app         TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    build_id    TEXT NOT NULL,
    builder     TEXT NOT NULL,
    start       TEXT NOT NULL,
    config      TEXT NOT NULL,
    status      TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (app, version)
);

CREATE TABLE secrets (
    app        TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    sealed     BLOB NOT NULL,
    digest     TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (app, name)
);

-- machines the supervisor has started and not yet seen stop; after a crash of
-- the server these name the processes to clean up.
CREATE TABLE machines (
    id         TEXT PRIMARY KEY,
    app        TEXT NOT NULL,
    release    INTEGER NOT NULL,
    started_at TEXT NOT NULL
);

CREATE TABLE events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    app     TEXT NOT NULL,
    type    TEXT NOT NULL,
    message TEXT NOT NULL,
    at      TEXT NOT NULL
);
CREATE INDEX events_app ON events(app, id);

-- +goose Down
DROP TABLE events;
DROP TABLE machines;
DROP TABLE secrets;
DROP TABLE releases;
DROP TABLE apps;
