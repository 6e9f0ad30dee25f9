CREATE SCHEMA IF NOT EXISTS dlock;
CREATE SEQUENCE IF NOT EXISTS dlock.fencing AS bigint MINVALUE 1 START WITH 1 CACHE 1 NO CYCLE;
CREATE TABLE IF NOT EXISTS dlock.semaphore_permits (namespace text NOT NULL, name text NOT NULL, permits integer NOT NULL CHECK (permits > 0), PRIMARY KEY (namespace, name));
