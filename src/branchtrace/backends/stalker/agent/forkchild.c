/*
 * branchtrace Stalker agent: a forked child leaves the hooks behind (docs/stalker.md,
 * "fork"). A fork copies the hooked code and Frida's trampolines, but none of Frida's
 * threads: a lock one of them held at the moment of the fork (its allocator's, taken
 * whenever the agent's threads do anything, say send a message) stays held in the child
 * for ever. Any hook the child then runs can wait on it: Interceptor's own entry code
 * does, before any listener of ours or Frida's (a bash loop of subshells, attached: its
 * child stuck in exit(), in Frida's exit monitor and crash.js's exit probe, and the
 * parent in waitpid with it). So as fork returns in the child, the child puts back the
 * first bytes of every function a hook patched, as the files have them (agent.js,
 * noteHooked), with raw system calls and plain stores: from then on it runs none of our
 * or Frida's code. The parent (or a failed fork) asks the agent to follow the thread
 * again.
 */

#define BT_UNHOOK_MAX 64

typedef struct _BtUnhook BtUnhook;

struct _BtUnhook
{
  guint64 address;           /* a function a hook patched */
  guint8 bytes[16];          /* its first bytes, as its file has them */
};

extern BtUnhook bt_unhooks[BT_UNHOOK_MAX];
extern volatile guint32 bt_unhooks_n;
extern void bt_fork_parent (void);

static void
bt_unhook_child (void)
{
  guint32 i, n = bt_unhooks_n;

  for (i = 0; i < n && i < BT_UNHOOK_MAX; i++)
  {
    const BtUnhook * e = &bt_unhooks[i];
    guint64 page = e->address & ~(guint64) 0xfff;
    guint64 len = ((e->address + sizeof (e->bytes) + 0xfff) & ~(guint64) 0xfff) - page;
    volatile guint8 * code = GSIZE_TO_POINTER (e->address);
    guint k;

    if (bt_raw_syscall (10, (glong) page, (glong) len, 7, 0, 0, 0) != 0)   /* mprotect rwx */
      continue;
    for (k = 0; k < sizeof (e->bytes); k++)
      code[k] = e->bytes[k];
    bt_raw_syscall (10, (glong) page, (glong) len, 5, 0, 0, 0);            /* r-x again */
  }
}

/* fork()'s exit, a C listener (agent.js, unfollowAroundFork). */
void
bt_fork_leave (GumInvocationContext * ic)
{
  if ((gint) GPOINTER_TO_SIZE (gum_invocation_context_get_return_value (ic)) == 0)
  {
    guint64 base = 0;

    bt_unhook_child ();
    /* the forking thread's gs base, if ours (thread.c, "gs"), is nothing to the child: 0
     * again, so that the child's agent takes gs for its own records */
    if (bt_config.wrgs != NULL && (base = bt_config.rdgs ()) != 0 && bt_gs_free (base))
      bt_config.wrgs (0);
    return;
  }
  bt_fork_parent ();
}
