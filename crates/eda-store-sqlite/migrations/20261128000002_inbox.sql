-- The transactional inbox: a consumer group's handled keys, marked in the same
-- transaction as the handler's own writes.
CREATE TABLE IF NOT EXISTS eda_inbox (
    grp     TEXT    NOT NULL,
    key     TEXT    NOT NULL,
    seen_ms INTEGER NOT NULL,
    PRIMARY KEY (grp, key)
);
CREATE INDEX IF NOT EXISTS eda_inbox_seen ON eda_inbox (seen_ms);
