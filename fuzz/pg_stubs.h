/*
 * pg_stubs.h
 *		What pg_stubs.c offers the harness besides the backend symbols.
 */
#ifndef FUZZ_PG_STUBS_H
#define FUZZ_PG_STUBS_H

typedef struct FzError
{
	int			elevel;
	int			sqlerrcode;
	bool		raised;
	int			nonerrors;		/* LOG/WARNING reports seen */
	const char *filename;
	int			lineno;
	char		message[2048];
	char		detail[2048];
	char		hint[1024];
	char		detail_log[2048];
} FzError;

extern FzError fz_error;

/* called by errfinish for every ERROR before it longjmps (fuzz_parse.c) */
extern void fz_on_error(const FzError *e);

extern void fz_memory_reset(void);
extern size_t fz_memory_chunks(void);
extern void fz_clock_advance(long us);

#endif
