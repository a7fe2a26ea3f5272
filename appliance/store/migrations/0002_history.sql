-- Which database lineage this is. A restore of an archive made by the same
-- lineage keeps the live database's operations history (job runs, backup
-- catalogue, alerts, events, reloads), which is newer than the archive's copy;
-- an archive from elsewhere (a fresh host recovering) brings its own history.
CREATE TABLE appliance_instance (
  id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
  created_at timestamptz NOT NULL DEFAULT now(),
  singleton  boolean     NOT NULL DEFAULT true UNIQUE CHECK (singleton)
);
INSERT INTO appliance_instance DEFAULT VALUES;

-- The earliest session the vendor has been asked for, per symbol, by a
-- completed whole-history fetch. A `since` earlier than it means history is
-- still to be fetched; completeness counts from `since` until it has been.
ALTER TABLE symbols ADD COLUMN history_from date;
