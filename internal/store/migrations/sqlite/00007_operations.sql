-- +goose Up
-- Operations: the mutating work the server runs (internal/ops), and their
-- numbered progress events. An operation outlives its target's deletion:
-- it is the record of what happened.
CREATE TABLE operations (
    id         TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    target     TEXT NOT NULL,
    state      TEXT NOT NULL,
    who        TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    started_at TEXT NOT NULL DEFAULT '',
    ended_at   TEXT NOT NULL DEFAULT '',
    error      TEXT NOT NULL DEFAULT '',
    error_kind TEXT NOT NULL DEFAULT '',
    recovery   TEXT NOT NULL DEFAULT '',
    result     TEXT NOT NULL DEFAULT '',
    events     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX operations_target ON operations(target);

CREATE TABLE operation_events (
    op_id  TEXT NOT NULL REFERENCES operations(id) ON DELETE CASCADE,
    seq    INTEGER NOT NULL,
    at     TEXT NOT NULL,
    type   TEXT NOT NULL,
    state  TEXT NOT NULL DEFAULT '',
    text   TEXT NOT NULL DEFAULT '',
    kind   TEXT NOT NULL DEFAULT '',
    result TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (op_id, seq)
);

-- +goose Down
DROP TABLE operation_events;
DROP TABLE operations;
