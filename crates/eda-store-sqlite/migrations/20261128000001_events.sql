-- One row per event; one column per CloudEvents attribute, so sqlite3 reads them.
CREATE TABLE IF NOT EXISTS eda_events (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    topic           TEXT    NOT NULL,
    id              TEXT    NOT NULL,
    source          TEXT    NOT NULL,
    type            TEXT    NOT NULL,
    time            TEXT    NOT NULL,          -- RFC 3339 with milliseconds
    time_ms         INTEGER NOT NULL,          -- the same, for range queries
    datacontenttype TEXT,
    dataschema      TEXT,
    subject         TEXT,
    traceparent     TEXT,
    tracestate      TEXT,
    partitionkey    TEXT,
    correlationid   TEXT,
    causationid     TEXT,
    extensions      TEXT    NOT NULL DEFAULT '{}',  -- other extensions, a JSON object
    data            BLOB    NOT NULL,
    UNIQUE (topic, id)
);
CREATE INDEX IF NOT EXISTS eda_events_topic_seq ON eda_events (topic, seq);

-- Per consumer group: the next sequence never delivered to it.
CREATE TABLE IF NOT EXISTS eda_groups (
    topic    TEXT    NOT NULL,
    grp      TEXT    NOT NULL,
    next_seq INTEGER NOT NULL,
    PRIMARY KEY (topic, grp)
);

-- Delivered, not acked yet: the attempt count survives crashes. deadline_ms NULL means
-- nacked, to redeliver at once.
CREATE TABLE IF NOT EXISTS eda_inflight (
    topic       TEXT    NOT NULL,
    grp         TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    attempts    INTEGER NOT NULL,
    holder      TEXT,
    deadline_ms INTEGER,
    token       INTEGER NOT NULL,
    PRIMARY KEY (topic, grp, seq)
);

CREATE TABLE IF NOT EXISTS eda_offsets (
    grp       TEXT    NOT NULL,
    topic     TEXT    NOT NULL,
    partition INTEGER NOT NULL,
    offset    INTEGER NOT NULL,
    PRIMARY KEY (grp, topic, partition)
);

CREATE TABLE IF NOT EXISTS eda_leases (
    name     TEXT PRIMARY KEY,
    holder   TEXT    NOT NULL,
    until_ms INTEGER NOT NULL
);
