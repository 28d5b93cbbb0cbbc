"""Empties the message archive of a Waxwing SQLite database (bench/archive_run.sh):
every archive block and owner, then a checkpoint and VACUUM, so each run starts alike."""
import sqlite3
import sys

c = sqlite3.connect(sys.argv[1])
c.execute('DELETE FROM archive_blocks')
c.execute('DELETE FROM archive_owners')
c.commit()
c.execute('PRAGMA wal_checkpoint(TRUNCATE)')
c.execute('VACUUM')
c.close()
