-- Named events carried by a change (command, availability, pairing), so an event stream
-- resumed with Last-Event-ID replays them too.
ALTER TABLE roost_changes ADD COLUMN event TEXT;
ALTER TABLE roost_changes ADD COLUMN detail TEXT;
