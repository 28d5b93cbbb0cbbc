-- Cluster mode: the highest fencing number a room's owner wrote with.
-- A node owns a room while its lease in Redis names it; each new lease
-- gets a larger number, and every write of the room's rows raises this
-- one in the same transaction, or is refused when it is already larger
-- (the writer lost the room to another node while it was paused or cut
-- off). Kept when the room is deleted, so a stale owner cannot bring a
-- destroyed room back.
CREATE TABLE muc_fences (
    service TEXT NOT NULL,
    room    TEXT NOT NULL,
    fence   BIGINT NOT NULL,
    PRIMARY KEY (service, room)
);
