-- Issue 22: as SQLite's migration 0015, a new contact writes one random-key index entry (its
-- key), not two. The lookups by contact id alone walk the key index once per stored location
-- (`store::snapshot::with_locations_holding_contacts`).
DROP INDEX contacts_by_contact_id;
