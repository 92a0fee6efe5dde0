-- The TSBS-iot queries of query/tests/tsbs_queries.sql in PostgreSQL's SQL, for
-- `annals-bench compare` (same headers, same columns, same order). Tables: tags as text,
-- `time timestamptz` (the session runs in UTC), fields double precision, status bigint.
-- Differences from the portable text: `DOUBLE` is `DOUBLE PRECISION`, and date_bin's origin
-- is a `timestamptz` (PostgreSQL's date_bin takes two values of the same type). Everything
-- else (date_bin, date_trunc, row_number, lag, count(DISTINCT)) is the same text.
-- One query per `-- name: <id>` header, up to the next header.

-- name: last_location
-- Last known position of each truck of one fleet.
SELECT name, driver, latitude, longitude, time
FROM (
  SELECT name, driver, latitude, longitude, time,
         row_number() OVER (PARTITION BY name ORDER BY time DESC) AS rn
  FROM readings
  WHERE fleet = 'South' AND name IS NOT NULL
) AS latest
WHERE rn = 1
ORDER BY name

-- name: low_fuel
-- Trucks that ran low on fuel (below 10 %), with their latest low reading.
SELECT name, driver, fleet, fuel_state, time
FROM (
  SELECT name, driver, fleet, fuel_state, time,
         row_number() OVER (PARTITION BY name ORDER BY time DESC) AS rn
  FROM diagnostics
  WHERE name IS NOT NULL AND fuel_state < 0.1
) AS latest
WHERE rn = 1
ORDER BY name

-- name: high_load
-- Trucks whose latest load is above 90 % of their capacity.
SELECT name, driver, current_load, capacity, current_load / capacity AS load_fraction, time
FROM (
  SELECT name, driver, current_load, CAST(load_capacity AS DOUBLE PRECISION) AS capacity, time,
         row_number() OVER (PARTITION BY name ORDER BY time DESC) AS rn
  FROM diagnostics
  WHERE name IS NOT NULL AND current_load IS NOT NULL AND load_capacity IS NOT NULL
) AS latest
WHERE rn = 1 AND current_load / capacity > 0.9
ORDER BY name

-- name: stationary_trucks
-- 10-minute windows in which a truck's average velocity was below 10 (stationary or crawling).
SELECT name, date_bin(INTERVAL '10 minutes', time, TIMESTAMPTZ '2016-01-01 00:00:00+00') AS window_start,
       avg(velocity) AS mean_velocity, count(velocity) AS readings
FROM readings
WHERE name IS NOT NULL AND velocity IS NOT NULL
GROUP BY name, date_bin(INTERVAL '10 minutes', time, TIMESTAMPTZ '2016-01-01 00:00:00+00')
HAVING avg(velocity) < 10
ORDER BY name, window_start

-- name: long_driving_sessions
-- Trucks that drove fast (average velocity above 50) in more than 15 ten-minute windows.
SELECT name, count(*) AS driving_windows, min(window_start) AS first_window
FROM (
  SELECT name, date_bin(INTERVAL '10 minutes', time, TIMESTAMPTZ '2016-01-01 00:00:00+00') AS window_start
  FROM readings
  WHERE name IS NOT NULL
  GROUP BY name, date_bin(INTERVAL '10 minutes', time, TIMESTAMPTZ '2016-01-01 00:00:00+00')
  HAVING avg(velocity) > 50
) AS driving
GROUP BY name
HAVING count(*) > 15
ORDER BY name

-- name: average_load
-- Average load, as a fraction of capacity, per fleet, model and capacity.
SELECT fleet, model, CAST(load_capacity AS DOUBLE PRECISION) AS capacity,
       avg(current_load / CAST(load_capacity AS DOUBLE PRECISION)) AS mean_load_fraction,
       count(current_load) AS readings
FROM diagnostics
WHERE fleet IS NOT NULL AND model IS NOT NULL AND load_capacity IS NOT NULL
GROUP BY fleet, model, load_capacity
ORDER BY fleet, model, capacity

-- name: daily_activity
-- Per fleet, model and day: the fraction of truck 10-minute windows in which the truck was
-- active (average status below 1).
SELECT fleet, model, day,
       sum(CASE WHEN mean_status < 1 THEN 1 ELSE 0 END) AS active_windows,
       count(*) AS windows,
       CAST(sum(CASE WHEN mean_status < 1 THEN 1 ELSE 0 END) AS DOUBLE PRECISION) / count(*) AS active_fraction
FROM (
  SELECT name, fleet, model, date_trunc('day', time) AS day,
         date_bin(INTERVAL '10 minutes', time, TIMESTAMPTZ '2016-01-01 00:00:00+00') AS window_start,
         avg(status) AS mean_status
  FROM diagnostics
  WHERE name IS NOT NULL AND fleet IS NOT NULL AND model IS NOT NULL
  GROUP BY name, fleet, model, date_trunc('day', time),
           date_bin(INTERVAL '10 minutes', time, TIMESTAMPTZ '2016-01-01 00:00:00+00')
) AS per_window
GROUP BY fleet, model, day
ORDER BY fleet, model, day

-- name: breakdown_frequency
-- Breakdowns per model: a truck is broken down in a 10-minute window when at least half of
-- its statuses there are 0; a breakdown is a window broken down after one that was not.
WITH per_window AS (
  SELECT name, model,
         date_bin(INTERVAL '10 minutes', time, TIMESTAMPTZ '2016-01-01 00:00:00+00') AS window_start,
         CAST(sum(CASE WHEN status = 0 THEN 1 ELSE 0 END) AS DOUBLE PRECISION) / count(*) >= 0.5 AS broken_down
  FROM diagnostics
  WHERE name IS NOT NULL AND model IS NOT NULL AND status IS NOT NULL
  GROUP BY name, model, date_bin(INTERVAL '10 minutes', time, TIMESTAMPTZ '2016-01-01 00:00:00+00')
), changes AS (
  SELECT name, model, window_start, broken_down,
         lag(broken_down) OVER (PARTITION BY name, model ORDER BY window_start) AS was_broken_down
  FROM per_window
)
SELECT model, count(*) AS breakdowns, count(DISTINCT name) AS trucks
FROM changes
WHERE broken_down AND NOT was_broken_down
GROUP BY model
ORDER BY model
