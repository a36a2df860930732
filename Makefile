# etcd_lock: PostgreSQL extension exposing etcd locks as SQL functions (PGXS)
MODULE_big = etcd_lock
OBJS = src/etcd_lock.o src/guc.o src/transport.o src/gateway.o src/group.o src/streams.o src/auth.o src/shmem.o src/keys.o \
	src/lease.o src/lockops.o src/deadlock.o src/election.o src/holders.o \
	src/locktable.o src/session.o src/acquire.o src/worker.o src/renewals.o src/releases.o src/functions.o
EXTENSION = etcd_lock
# 1.0, 1.1 and 1.2 are released and never edited again; 1.0--1.1,
# 1.1--1.2 and 1.2--1.3 hold what each added; the full 1.3 script is built
# from the four, so a fresh 1.3 and an updated 1.0, 1.1 or 1.2 cannot drift
# apart (t/015 compares their catalogs)
DATA = sql/etcd_lock--1.0.sql sql/etcd_lock--1.0--1.1.sql sql/etcd_lock--1.1--1.2.sql \
	sql/etcd_lock--1.2--1.3.sql
DATA_built = sql/etcd_lock--1.3.sql
PGFILEDESC = "etcd_lock - distributed locks stored in etcd"

PG_CPPFLAGS = -I$(srcdir)/src
# the server's flags plus -Wall -Wextra, minus what PostgreSQL's own headers
# trigger; scripts/test.sh adds -Werror
PG_CFLAGS = -Wall -Wextra -Wno-unused-parameter -Wno-sign-compare -Wno-missing-field-initializers
SHLIB_LINK = -lcurl -ljansson

# pg_regress against a throwaway instance preloaded with the extension;
# scripts/test.sh writes regress.conf (it points at the etcd it started).
REGRESS = etcd_lock_api etcd_lock_errors etcd_lock_xact etcd_lock_modes
REGRESS_OPTS = --temp-instance=./tmp_check_regress --temp-config=./regress.conf
TAP_TESTS = 1
EXTRA_CLEAN = tmp_check_regress regress.conf

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS tracks no header dependencies: a changed struct in a header must
# rebuild every object, or the modules disagree on shared memory layout.
$(OBJS): $(wildcard $(srcdir)/src/*.h)

sql/etcd_lock--1.3.sql: sql/etcd_lock--1.0.sql sql/etcd_lock--1.0--1.1.sql sql/etcd_lock--1.1--1.2.sql \
		sql/etcd_lock--1.2--1.3.sql
	{ echo '/* etcd_lock--1.3.sql: built by make from etcd_lock--1.0.sql and the updates to 1.1, 1.2 and 1.3; do not edit */'; \
	  cat $^; } > $@
