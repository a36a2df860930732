/*
 * etcd_lock.h
 *		Module entry: preload state shared by the SQL functions.
 */
#ifndef ETCD_LOCK_H
#define ETCD_LOCK_H

extern bool etcd_lock_preloaded;

#endif
