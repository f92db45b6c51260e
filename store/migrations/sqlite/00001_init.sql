-- +goose Up
-- The inbox: one row per (handler, event) the handler has processed. It is
-- written in the handler's own transaction, so a redelivered event finds its row
-- and is acknowledged without running the handler again.
CREATE TABLE eventfn_inbox (
    handler      TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    event_type   TEXT NOT NULL,
    processed_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (handler, event_id)
);

CREATE TABLE orders (
    id             TEXT PRIMARY KEY,
    customer_email TEXT NOT NULL,
    total_cents    INTEGER NOT NULL,
    status         TEXT NOT NULL,
    created_at     TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at     TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE order_items (
    order_id    TEXT NOT NULL REFERENCES orders (id),
    line        INTEGER NOT NULL,
    sku         TEXT NOT NULL,
    quantity    INTEGER NOT NULL,
    price_cents INTEGER NOT NULL,
    PRIMARY KEY (order_id, line)
);

CREATE TABLE payments (
    order_id     TEXT PRIMARY KEY,
    payment_id   TEXT NOT NULL,
    amount_cents INTEGER NOT NULL,
    charged_at   TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE emails (
    order_id   TEXT PRIMARY KEY,
    recipient  TEXT NOT NULL,
    subject    TEXT NOT NULL,
    body       TEXT NOT NULL,
    sent_at    TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);

-- +goose Down
DROP TABLE emails;
DROP TABLE payments;
DROP TABLE order_items;
DROP TABLE orders;
DROP TABLE eventfn_inbox;
