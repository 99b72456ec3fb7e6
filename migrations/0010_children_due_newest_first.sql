-- The children backlog is read newest first (a contact changed during a first sync gets its
-- tasks and notes before the old ones), straight from the index instead of a sort of every
-- due contact per chunk. The new index covers every query the old one served.
CREATE INDEX contacts_children_due_recent ON contacts (location_id, children_synced_at, date_updated_ms DESC, contact_id);
DROP INDEX contacts_children_due;
