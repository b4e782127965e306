/*
 * branchtrace Stalker recorder, part 1 of 6: the types shared by the C code compiled in
 * the target (the agent concatenates recorder.h, emit.c, signals.c and recorder.c into
 * one CModule: TinyCC compiles a single translation unit).
 */

#include <gum/gumstalker.h>
#include <gum/gummodulemap.h>
#include <gum/guminterceptor.h>

#define BT_SITES 441          /* BtThread fills its page: 480 + 8 * 441 + 56 + 8 = 4072 */

typedef struct _BtThread BtThread;
typedef struct _BtConfig BtConfig;
typedef struct _BtBlock BtBlock;
typedef struct _BtTableHeader BtTableHeader;
typedef struct _BtSignal BtSignal;

/* A handler the program installed, which the kernel now reaches through ours. */
struct _BtSignal
{
  gpointer handler;          /* the program's */
  guint32 siginfo;           /* it was installed with SA_SIGINFO */
  guint32 block;             /* the id of its synthetic block (0: none) */
};

#define BT_THREAD_SLOTS 4096
#define BT_NSIG 65
#define BT_NO_ID 0xffffffffU
#define BT_GS_TAKEN 0xfffffffeU   /* bt_flush_pending's id: the program sets its gs base */

/* The per-thread context. The emitted code uses the first fields, at fixed offsets
 * (agent.js has the same offsets). */
struct _BtThread
{
  guint64 save_rax;          /*   0 */
  guint64 save_rcx;          /*   8 */
  guint64 save_rdx;          /*  16 */
  gint64 cursor;             /*  24 ring: slot - capacity; stream: written - reserved_end */
  guint64 chunk_end;         /*  32 stream: address just past the reserved chunk */
  gpointer slow;             /*  40 stream: called when the chunk is full (rdi = T) */
  guint64 reserved_end;      /*  48 stream: position where the reserved chunk ends */
  volatile guint64 * entry;  /*  56 the thread entry (8 words) in the shared table page */
  guint32 * region;          /*  64 */
  guint64 capacity;          /*  72 records per region */
  guint64 chunk;             /*  80 stream: records per chunk */
  guint32 mode;              /*  88 1 = ring, 2 = stream */
  guint32 tid;               /*  92 */
  guint64 region_bytes;      /*  96 */
  volatile gint in_slow;     /* 104 threads inside bt_stream_slow (0 or 1) */
  guint32 ring_pow2;         /* 108 ring: log2(capacity) when a power of two, else 0 */
  volatile guint64 nopend;   /* 112 1; 0 while signal records wait in `pending` */
  gpointer flush;            /* 120 called when nopend is 0 (rdi = T) */
  guint64 sink_end;          /* 128 after detaching: end of a private chunk-sized sink */
  volatile gint npending;    /* 136 */
  guint32 rc_used;           /* 140 an entry went into the return cache since it was emptied */
  guint32 pending[32];       /* 144 ids a signal handler left for the next block to append */
  volatile guint64 * check;  /* 272 BRANCHTRACE_STALKER_CHECK: a block counter apart from
                              *     the store (a shared page the tracer reads); else NULL */
  guint64 * retcache;        /* 280 the return cache: BT_RC_ENTRIES {real, code} pairs
                              *     (emit.c, "Returns"); NULL: returns are Stalker's */
  guint64 save_flags;        /* 288 rax after lahf (flags in byte 1) while a return runs */
  guint64 want;              /* 296 a cache miss's target: the next block puts itself in
                              *     the cache (bt_flush_pending); BT_RC_EMPTY: none */
  guint64 * jslot;           /* 304 8 bytes below 2 GiB: `jmp [jslot]` ends a hit of an
                              *     indirect jump or call; NULL: those are Stalker's */
  guint64 save_target;       /* 312 an indirect branch's target while its lookup runs */
  guint64 any_ret_code;      /* 320 the code of one of this thread's `ret` lookups: a way
                              *     into Stalker for a signal handler (signals.c); 0: none */
  guint32 record_len;        /* 328 bytes of this thread's block-start code (0: not known) */
  guint16 seq_lo;            /* 332 in that code, [lo, hi) touches the cursor and `written`; */
  guint16 seq_hi;            /* 334 after jend come the pend and slow paths (emit.c) */
  guint32 seq_jend;          /* 336 */
  guint32 shares_tls;        /* 340 1: a clone() child sharing its parent's thread pointer:
                              *     no code of Frida's JS runtime may run in it */
  guint32 pending_reps[32];  /* 344 pending[k-1], pending[k] happened this many times more */
  guint32 nsites;            /* 472 system call sites compiled for this thread (signals.c) */
  guint32 gs;                /* 476 stream: its block-start code stores through gs (thread.c,
                              *     "gs"): 1; with a cursor: 2; not decided: 0; through gs,
                              *     not pointed yet: 4; through C, the program took gs: 3 */
  guint64 sites[BT_SITES];   /* 480 per site, the number its last system call had: a call
                              *     that a swallowed Ctrl-C cut short is issued again */
  guint64 vfork_armed;       /* 4008 1 from vfork's entry to its return in the parent */
  guint64 vfork_rax;         /* 4016 (vfork.c: the check after each system call) */
  guint64 vac;               /* 4024 the program's alignment-check flag (acflag.c): 0 or
                              *      0x40000, never left set in the real flags */
  guint64 fault_real;        /* 4032 a fault the program handles (crash.js, signals.c */
  guint64 fault_stalker;     /* 4040 bt_fault_entry): where it really was, and the pc */
  guint64 rz_addr;           /* 4048 re-entered after a handler moved the pc: the stack */
  guint64 rz_saved;          /* 4056 word the re-entry borrowed, put back by the next block */
  guint64 gs_skip;           /* 4064 gs code: 1 while its pend path must jump past the
                              *     inline store: gs not pointed yet (gs 4), or the program
                              *     took gs (3: bt_flush_pending stores the record) */
};

/* The return cache: direct-mapped by a hash of the return address, 262144 entries of
 * 16 bytes (4 MiB of address space a thread, its pages touched only as entries fill).
 * A key is the address inverted (BT_RC_KEY), so that an empty entry, key 0, is what a
 * fresh anonymous page holds: no address inverts to 0 but ~0, which no return or jump
 * reaches. BT_RC_EMPTY is "no address" for `want`. */
#define BT_RC_ENTRIES 262144
#define BT_RC_EMPTY (~(guint64) 0)
#define BT_RC_KEY(a) (~(guint64) (a))
#define BT_RC_INDEX(a) ((((guint32) (a) >> 13) ^ (guint32) (a)) & (BT_RC_ENTRIES - 1))

/* What block-start code may address with a disp32 alone (emit.c, build_record_low) */
#define BT_LOW_LIMIT 0x7ff00000ULL

/* The block table entry: 32 bytes, little-endian (branchtrace/store/blocks.py BLOCK_DTYPE). */
struct _BtBlock
{
  guint64 start;             /* address of the first instruction */
  guint64 last;              /* address of the last instruction */
  guint64 end;               /* address after the last instruction (fall-through) */
  guint8 kind;               /* BranchKind of the last instruction */
  guint8 flags;              /* BT_FLAG_* */
  guint16 ninsn;             /* instructions in the block (saturating) */
  guint32 reserved;
};

struct _BtTableHeader
{
  gchar magic[8];            /* "BTBLOCKS" */
  guint32 version;
  guint32 entry_size;
  guint64 capacity;          /* entries the file holds */
  volatile gint count;       /* ids handed out so far (may pass capacity: overflow) */
  volatile guint8 events[4]; /* 28: events[BT_EVENT_*] = 1, for the tracer's notes
                              * (blocks.py): a byte each, set by a plain store (no race) */
};

#define BT_EVENT_GS_LOST 0   /* a thread set its own gs base while its records went
                              * through gs: they went through C from then on (thread.c) */
#define BT_EVENT_ANON_CODE 1 /* code the program runs from memory that is no file's (a
                              * JIT's), without --smc-check: it may be rewritten after it
                              * ran (recorder.c) */

#define BT_FLAG_VALID 1
#define BT_FLAG_FOREIGN 2
#define BT_FLAG_UNRECORDED 4
#define BT_FLAG_TOOL 8
#define BT_FLAG_HOOKED 16
#define BT_FLAG_ASYNC 32

/* BranchKind values (branchtrace/model.py). */
enum
{
  BT_OTHER = 0, BT_CALL = 1, BT_RETURN = 2, BT_JUMP = 3, BT_COND = 4,
  BT_INDIRECT_JUMP = 5, BT_INDIRECT_CALL = 6, BT_SYSCALL = 7,
};

struct _BtConfig
{
  BtTableHeader * table;     /*  0 */
  BtBlock * blocks;          /*  8 */
  guint64 table_capacity;    /* 16 */
  guint64 * ranges;          /* 24 sorted [start, end) pairs of the --only modules */
  guint32 nranges;           /* 32 */
  guint32 use_bmi2;          /* 36 */
  volatile gint abort;       /* 40 stop waiting for the consumer */
  guint32 host_pid;          /* 44 */
  GumModuleMap * modules;    /* 48 the program's modules (Frida's own are not in it) */
  gint (* is_tool) (guint64 address);  /* 56 the agent: is this Frida's own code? */
  BtThread ** threads;       /* 64 BT_THREAD_SLOTS contexts, open addressing by tid */
  BtSignal * signals;        /* 72 BT_NSIG handlers the program installed, wrapped */
  const gchar * host_stat;   /* 80 "/proc/<tracer pid>/stat": is the tracer a zombie? */
  volatile gint interrupted; /* 88 1: the tracer was interrupted (Ctrl-C), 2: that Ctrl-C
                              * was swallowed in the program (bt_sigint) */
  volatile gint in_sigint;   /* 92 threads inside bt_sigint */
  gpointer enter;            /* 96 the stub that enters a handler through Stalker (agent.js,
                              *    handlerEntry); NULL: handlers run natively */
  guint64 restorer;          /* 104 the signal return trampoline (glibc's __restore_rt) */
  guint32 marker;            /* 112 the disp32 of the NOP that ends each block's body */
  volatile guint32 ntools;   /* 116 tids in `tools` */
  volatile guint32 * tools;  /* 120 BT_TOOL_SLOTS tids of Frida's own threads (agent.js) */
  guint64 * ours;            /* 128 [start, end) pairs: modules only Frida's agent loaded
                              *     (agent.js, excludeOurModules); [0, 0): given back */
  volatile guint32 nours;    /* 136 */
  guint32 reserved3;         /* 140 */
  guint64 (* rdgs) (void);   /* 144 rdgsbase, wrgsbase (agent.js, gsStubs); NULL: the */
  void (* wrgs) (guint64);   /* 152 kernel does not let programs use them (gs.c) */
  guint32 smc;               /* 160 run --smc-check all: every block checked (no note of
                              *     code from no file, BT_EVENT_ANON_CODE) */
  guint32 inline_paths;      /* 164 1: Stalker's trust threshold is 0, its blocks' code is
                              *     adjacent and its backpatching may fill a block's end
                              *     with NOPs: no paths after a block (emit.c, emit_stub) */
};

#define BT_TOOL_SLOTS 256

/* Provided by the agent: CModule data is read-only, writable memory comes from outside. */
extern BtConfig bt_config;
extern int kill (int pid, int sig);
extern long syscall (long number, ...);
extern int * __errno_location (void);
