/*
 * pg_stubs.c
 *		Just enough of the PostgreSQL backend for fuzz_parse.c: palloc and
 *		friends (one "memory context" that the harness resets after every
 *		input), ereport/elog (ERROR longjmps to the innermost PG_TRY, like
 *		the backend; the last error is kept for the harness to inspect),
 *		StringInfo, a fake clock, and the few globals the code touches.
 *
 * Allocations use malloc, so AddressSanitizer checks every palloc'd
 * buffer. Base64 is PostgreSQL's own (base64.o from libpgcommon.a).
 */
#include "postgres.h"

#include <setjmp.h>

#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "pg_stubs.h"

/* ---- memory: every palloc'd chunk is on one list, freed by reset ---- */

typedef struct Chunk
{
	struct Chunk *prev,
			   *next;
	size_t		size;
	/* keep the payload maximally aligned, as palloc does */
	max_align_t align[];
} Chunk;

static Chunk chunks = {&chunks, &chunks, 0};
static size_t nchunks = 0;

MemoryContext CurrentMemoryContext = NULL;
MemoryContext TopMemoryContext = NULL;
MemoryContext ErrorContext = NULL;

static void *
fz_alloc(size_t size, bool zero)
{
	Chunk	   *c;

	if (!AllocSizeIsValid(size))
		elog(ERROR, "invalid memory alloc request size %zu", size);
	c = malloc(sizeof(Chunk) + size);
	if (!c)
		abort();
	if (zero)
		memset(c->align, 0, size);
	c->size = size;
	c->next = chunks.next;
	c->prev = &chunks;
	chunks.next->prev = c;
	chunks.next = c;
	nchunks++;
	return c->align;
}

static Chunk *
fz_chunk(void *p)
{
	return (Chunk *) ((char *) p - offsetof(Chunk, align));
}

void *
palloc(Size size)
{
	return fz_alloc(size, false);
}

void *
palloc0(Size size)
{
	return fz_alloc(size, true);
}

void *
palloc_extended(Size size, int flags)
{
	return fz_alloc(size, (flags & MCXT_ALLOC_ZERO) != 0);
}

void *
MemoryContextAlloc(MemoryContext context, Size size)
{
	return fz_alloc(size, false);
}

void *
MemoryContextAllocZero(MemoryContext context, Size size)
{
	return fz_alloc(size, true);
}

void
pfree(void *p)
{
	Chunk	   *c = fz_chunk(p);

	c->prev->next = c->next;
	c->next->prev = c->prev;
	nchunks--;
	free(c);
}

void *
repalloc(void *p, Size size)
{
	Chunk	   *old = fz_chunk(p);
	void	   *n = fz_alloc(size, false);

	memcpy(n, p, Min(old->size, size));
	pfree(p);
	return n;
}

char *
MemoryContextStrdup(MemoryContext context, const char *s)
{
	size_t		n = strlen(s) + 1;
	char	   *d = fz_alloc(n, false);

	memcpy(d, s, n);
	return d;
}

char *
pstrdup(const char *s)
{
	return MemoryContextStrdup(NULL, s);
}

char *
pnstrdup(const char *s, Size len)
{
	char	   *d;

	len = strnlen(s, len);
	d = fz_alloc(len + 1, false);
	memcpy(d, s, len);
	d[len] = '\0';
	return d;
}

size_t
pvsnprintf(char *buf, size_t len, const char *fmt, va_list args)
{
	int			n = vsnprintf(buf, len, fmt, args);

	if (n < 0)
		abort();
	return (size_t) n < len ? (size_t) n : (size_t) n + 1;
}

char *
psprintf(const char *fmt,...)
{
	va_list		ap;
	int			n;
	char	   *s;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		abort();
	s = fz_alloc(n + 1, false);
	va_start(ap, fmt);
	vsnprintf(s, n + 1, fmt, ap);
	va_end(ap);
	return s;
}

void
fz_memory_reset(void)
{
	while (chunks.next != &chunks)
		pfree(chunks.next->align);
}

size_t
fz_memory_chunks(void)
{
	return nchunks;
}

/* ---- StringInfo (same contract as src/common/stringinfo.c) ---- */

void
initStringInfo(StringInfo str)
{
	str->maxlen = 1024;
	str->data = palloc(str->maxlen);
	resetStringInfo(str);
}

void
resetStringInfo(StringInfo str)
{
	str->data[0] = '\0';
	str->len = 0;
	str->cursor = 0;
}

void
enlargeStringInfo(StringInfo str, int needed)
{
	int			newlen;

	if (needed < 0 || ((Size) needed) >= (MaxAllocSize - (Size) str->len))
		elog(ERROR, "out of memory: cannot enlarge string buffer");
	needed += str->len + 1;
	if (needed <= str->maxlen)
		return;
	newlen = 2 * str->maxlen;
	while (needed > newlen)
		newlen = 2 * newlen;
	if (newlen > (int) MaxAllocSize)
		newlen = (int) MaxAllocSize;
	str->data = repalloc(str->data, newlen);
	str->maxlen = newlen;
}

int
appendStringInfoVA(StringInfo str, const char *fmt, va_list args)
{
	int			avail = str->maxlen - str->len;
	int			n = vsnprintf(str->data + str->len, avail, fmt, args);

	if (n < 0)
		abort();
	if (n < avail)
	{
		str->len += n;
		return 0;
	}
	str->data[str->len] = '\0';
	return n + 1;
}

void
appendStringInfo(StringInfo str, const char *fmt,...)
{
	for (;;)
	{
		va_list		ap;
		int			needed;

		va_start(ap, fmt);
		needed = appendStringInfoVA(str, fmt, ap);
		va_end(ap);
		if (needed == 0)
			break;
		enlargeStringInfo(str, needed);
	}
}

void
appendBinaryStringInfo(StringInfo str, const char *data, int datalen)
{
	enlargeStringInfo(str, datalen);
	memcpy(str->data + str->len, data, datalen);
	str->len += datalen;
	str->data[str->len] = '\0';
}

void
appendStringInfoString(StringInfo str, const char *s)
{
	appendBinaryStringInfo(str, s, strlen(s));
}

void
appendStringInfoChar(StringInfo str, char ch)
{
	if (str->len + 1 >= str->maxlen)
		enlargeStringInfo(str, 1);
	str->data[str->len] = ch;
	str->len++;
	str->data[str->len] = '\0';
}

/* ---- errors ---- */

sigjmp_buf *PG_exception_stack = NULL;
ErrorContextCallback *error_context_stack = NULL;

FzError		fz_error;			/* the error being built / last raised */
static int	fz_depth = 0;

bool
errstart(int elevel, const char *domain)
{
	if (fz_depth++ > 0)
	{
		fprintf(stderr, "fuzz: ereport inside ereport\n");
		abort();
	}
	memset(&fz_error, 0, sizeof(fz_error));
	fz_error.elevel = elevel;
	fz_error.sqlerrcode = elevel >= ERROR ? ERRCODE_INTERNAL_ERROR : 0;
	return true;
}

bool
errstart_cold(int elevel, const char *domain)
{
	return errstart(elevel, domain);
}

void
errfinish(const char *filename, int lineno, const char *funcname)
{
	fz_depth = 0;
	fz_error.filename = filename;
	fz_error.lineno = lineno;
	if (fz_error.elevel < ERROR)
	{
		fz_error.nonerrors++;
		return;
	}
	fz_error.raised = true;
	fz_on_error(&fz_error);
	if (PG_exception_stack == NULL)
	{
		fprintf(stderr, "fuzz: ERROR outside PG_TRY at %s:%d: %s\n",
				filename, lineno, fz_error.message);
		abort();
	}
	siglongjmp(*PG_exception_stack, 1);
}

void
pg_re_throw(void)
{
	if (PG_exception_stack == NULL)
		abort();
	siglongjmp(*PG_exception_stack, 1);
}

/* what a PG_CATCH that handles the error calls (the credentials check) */
void
FlushErrorState(void)
{
	fz_depth = 0;
	fz_error.raised = false;
}

ErrorData *
CopyErrorData(void)
{
	ErrorData  *e = palloc0(sizeof(ErrorData));

	e->elevel = fz_error.elevel;
	e->sqlerrcode = fz_error.sqlerrcode;
	e->message = pstrdup(fz_error.message);
	return e;
}

void
FreeErrorData(ErrorData *edata)
{
	if (edata->message)
		pfree(edata->message);
	pfree(edata);
}

/* FNV-1a: any hash will do for the credentials stamp */
uint32
hash_bytes(const unsigned char *k, int keylen)
{
	uint32		h = 2166136261u;

	while (keylen-- > 0)
		h = (h ^ *k++) * 16777619u;
	return h;
}

int
errcode(int sqlerrcode)
{
	fz_error.sqlerrcode = sqlerrcode;
	return 0;
}

#define FZ_FORMAT(field) \
	do { \
		va_list ap; \
		va_start(ap, fmt); \
		vsnprintf(fz_error.field, sizeof(fz_error.field), fmt, ap); \
		va_end(ap); \
	} while (0)

int
errmsg(const char *fmt,...)
{
	FZ_FORMAT(message);
	return 0;
}

int
errmsg_internal(const char *fmt,...)
{
	FZ_FORMAT(message);
	return 0;
}

int
errdetail(const char *fmt,...)
{
	FZ_FORMAT(detail);
	return 0;
}

int
errdetail_internal(const char *fmt,...)
{
	FZ_FORMAT(detail);
	return 0;
}

int
errhint(const char *fmt,...)
{
	FZ_FORMAT(hint);
	return 0;
}

int
errdetail_log(const char *fmt,...)
{
	FZ_FORMAT(detail_log);
	return 0;
}

/* ---- files (the password file) and JSON escaping ---- */

FILE *
AllocateFile(const char *name, const char *mode)
{
	return fopen(name, mode);
}

int
FreeFile(FILE *file)
{
	return fclose(file);
}

/* escape_json as in src/backend/utils/adt/json.c */
void
escape_json(StringInfo buf, const char *str)
{
	const char *p;

	appendStringInfoCharMacro(buf, '"');
	for (p = str; *p; p++)
	{
		switch (*p)
		{
			case '\b':
				appendStringInfoString(buf, "\\b");
				break;
			case '\f':
				appendStringInfoString(buf, "\\f");
				break;
			case '\n':
				appendStringInfoString(buf, "\\n");
				break;
			case '\r':
				appendStringInfoString(buf, "\\r");
				break;
			case '\t':
				appendStringInfoString(buf, "\\t");
				break;
			case '"':
				appendStringInfoString(buf, "\\\"");
				break;
			case '\\':
				appendStringInfoString(buf, "\\\\");
				break;
			default:
				if ((unsigned char) *p < ' ')
					appendStringInfo(buf, "\\u%04x", (int) *p);
				else
					appendStringInfoCharMacro(buf, *p);
				break;
		}
	}
	appendStringInfoCharMacro(buf, '"');
}

/* GUC check hooks (guc.c) */
char	   *GUC_check_errdetail_string = NULL;

void
pre_format_elog_string(int errnumber, const char *domain)
{
}

char *
format_elog_string(const char *fmt,...)
{
	static char buf[1024];
	va_list		ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	return buf;
}

/* ---- time and interrupts ---- */

static TimestampTz fz_now = 700000000000000;	/* some day in 2022 */

TimestampTz
GetCurrentTimestamp(void)
{
	/* every look at the clock moves it a little, so loops make progress */
	fz_now += 10;
	return fz_now;
}

void
fz_clock_advance(long us)
{
	fz_now += us;
}

void
pg_usleep(long microsec)
{
	fz_now += microsec;
}

volatile sig_atomic_t InterruptPending = false;

void
ProcessInterrupts(void)
{
}

/* lease IDs are chosen by the client: deterministic bytes will do here */
bool
pg_strong_random(void *buf, size_t len)
{
	static unsigned char next = 1;

	for (size_t i = 0; i < len; i++)
		((unsigned char *) buf)[i] = next++;
	return true;
}
