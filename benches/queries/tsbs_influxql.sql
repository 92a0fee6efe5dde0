-- InfluxQL equivalents of the TSBS-iot queries (query/tests/tsbs_queries.sql), for
-- `annals-bench compare` against InfluxDB 1.x. Same `-- name:` headers; `-- columns:` says how
-- the harness builds the SQL query's columns, in its order, from InfluxDB's answer: `@tag` is
-- the series' group-by tag, a plain name is a returned column (`time` is the point's or the
-- window's time), `a / @b` divides a column by a tag (InfluxQL cannot do arithmetic with tags).
-- $START and $END are the workload's first and past-last nanosecond (GROUP BY time needs a
-- bounded range). `name` and `diagnostics` are InfluxQL keywords, hence the double quotes.
-- The harness sorts the rows of both sides before comparing them.
--
-- No equivalent (the harness reports them as such, not as failures):
-- none: high_load: keeps a row when a field divided by a tag exceeds 0.9; InfluxQL cannot compare a field with a tag
-- none: long_driving_sessions: needs a count and the first window of the same group at once (an aggregate and a selector); InfluxQL returns the query's start time then, not the window's
-- none: daily_activity: counts windows by a condition (CASE); InfluxQL has no conditional expressions
-- none: breakdown_frequency: compares each window with the previous one (lag); InfluxQL has no window functions over subquery rows with tags

-- name: last_location
-- columns: @name, driver, latitude, longitude, time
SELECT "driver", "latitude", "longitude" FROM "readings"
WHERE "fleet" = 'South' AND "name" =~ /./ AND time >= $START AND time < $END
GROUP BY "name" ORDER BY time DESC LIMIT 1

-- name: low_fuel
-- columns: @name, driver, fleet, fuel_state, time
SELECT "driver", "fleet", "fuel_state" FROM "diagnostics"
WHERE "name" =~ /./ AND "fuel_state" < 0.1 AND time >= $START AND time < $END
GROUP BY "name" ORDER BY time DESC LIMIT 1

-- name: stationary_trucks
-- columns: @name, time, mean_velocity, n
SELECT "mean_velocity", "n" FROM (
  SELECT mean("velocity") AS "mean_velocity", count("velocity") AS "n" FROM "readings"
  WHERE "name" =~ /./ AND time >= $START AND time < $END
  GROUP BY time(10m), "name"
) WHERE "mean_velocity" < 10 GROUP BY "name"

-- name: average_load
-- columns: @fleet, @model, @load_capacity, mean / @load_capacity, n
SELECT mean("current_load") AS "mean", count("current_load") AS "n" FROM "diagnostics"
WHERE "fleet" =~ /./ AND "model" =~ /./ AND "load_capacity" =~ /./ AND time >= $START AND time < $END
GROUP BY "fleet", "model", "load_capacity"
