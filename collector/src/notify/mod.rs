//! Notify: the durable outbox and delivery of alerts (webhooks, alert log, `alerts` table).
