-- A symbol the vendor does not know (its reference says so): named on the
-- dashboard, in /health and by `appliance status` until bars are stored for
-- it or it is removed from the config.
ALTER TABLE symbols ADD COLUMN IF NOT EXISTS unknown_at timestamptz;
ALTER TABLE symbols ADD COLUMN IF NOT EXISTS unknown_reason text;
