-- The Lucky Orange identity and events routes find a contact by id alone (a token names no
-- location; GHL ids are unique across locations): without this index every request scanned
-- the whole contacts table. Site reports are purged by age, which this index serves.
CREATE INDEX contacts_by_contact_id ON contacts (contact_id, updated_at);
CREATE INDEX lo_events_by_age ON lo_events (occurred_at);
