/*
 * branchtrace Stalker recorder, part 4 of 6: the stream mode's slow path (the reserved
 * chunk is full) and the set-up of a thread's context.
 */

void bt_flush_pending (BtThread * t, guint32 id, guint64 code);

/* Is the tracer gone (nobody will ever drain)? It no longer exists, it is a zombie
 * (killed, and its parent has not reaped it yet: kill(pid, 0) still succeeds then), or
 * it is exiting. */
gboolean
bt_tracer_gone (void)
{
  gchar buf[512];
  glong fd, n, i;

  if (bt_config.host_pid == 0)
    return FALSE;
  if (kill ((int) bt_config.host_pid, 0) != 0 && *__errno_location () == 3)
    return TRUE;                      /* ESRCH */
  if (bt_config.host_stat == NULL)
    return FALSE;
  fd = syscall (2, bt_config.host_stat, 0x80000);   /* open (O_RDONLY | O_CLOEXEC) */
  if (fd < 0)
    return *__errno_location () == 2;               /* ENOENT: gone */
  n = syscall (0, fd, buf, sizeof (buf) - 1);       /* read */
  syscall (3, fd);                                  /* close */
  for (i = n - 1; i > 0 && buf[i] != ')'; i--)
    ;
  if (i <= 0 || i + 2 >= n)
    return FALSE;
  if (buf[i + 2] == 'Z' || buf[i + 2] == 'X')
    return TRUE;
  /* Dying (SIGKILL) but not a zombie yet: PF_EXITING (0x4) in the flags, the 6th field
   * after the state. It is set before the process closes its files, so it shows when
   * Frida sees the tracer's connection go away. */
  {
    gint field = 0;
    gulong flags = 0;
    glong j;

    for (j = i + 2; j < n && field < 6; j++)
      if (buf[j] == ' ')
        field++;
    for (; j < n && buf[j] >= '0' && buf[j] <= '9'; j++)
      flags = flags * 10 + (gulong) (buf[j] - '0');
    return field == 6 && (flags & 0x4) != 0;
  }
}

/* Stream mode: the reserved chunk is full (written == reserved_end, published). Reserve
 * the next one, waiting while the consumer has not freed it. Runs on the thread's
 * stack with every register the emitted code did not save pushed. */
void
bt_stream_slow (BtThread * t)
{
  volatile guint64 * e = t->entry;
  guint64 end = t->reserved_end + t->chunk;
  guint64 slot;
  gulong delay = 50;
  guint spins = 0;

  g_atomic_int_add (&t->in_slow, 1);
  /* the chunk [end - chunk, end) is free once consumed >= end - capacity */
  if (end > t->capacity && e[3] < end - t->capacity && !bt_config.abort)
  {
    e[5] = e[5] + 1;                  /* producer_waits: one per wait episode */
    while (e[3] < end - t->capacity && !bt_config.abort)
    {
      /* 50 us doubling up to 250 us: the consumer frees a chunk by copying it out
       * (~0.1 ms; it compresses on other threads), so a longer sleep is mostly time
       * the program could have run (docs/benchmarks.md, issue 15) */
      g_usleep (delay);
      delay = MIN (delay * 2, 250);
      if (++spins % 512 == 0 && bt_tracer_gone ())   /* ~130 ms */
        bt_config.abort = 1;          /* nobody will drain: overwrite from now on */
    }
  }
  t->reserved_end = end;
  e[7] = end;                         /* the reserved_end scratch word, for readers */
  slot = end % t->capacity;
  if (slot == 0)
    slot = t->capacity;
  t->chunk_end = GPOINTER_TO_SIZE (t->region) + slot * 4;
  t->cursor = -(gint64) t->chunk;
  g_atomic_int_add (&t->in_slow, -1);
}

/* Set up a thread context once the agent has mapped its memory. */
void
bt_thread_init (BtThread * t, volatile guint64 * entry, guint32 * region, guint64 capacity,
                guint64 chunk, guint32 mode, guint32 tid, guint64 region_bytes)
{
  guint64 w = entry[2];
  guint32 k;

  t->entry = entry;
  t->region = region;
  t->capacity = capacity;
  t->chunk = chunk;
  t->mode = mode;
  t->tid = tid;
  t->region_bytes = region_bytes;
  t->slow = bt_stream_slow;
  t->flush = bt_flush_pending;
  t->nopend = 1;
  t->npending = 0;
  t->in_slow = 0;
  t->ring_pow2 = 0;
  for (k = 1; k < 63; k++)
    if (((guint64) 1 << k) == capacity)
      t->ring_pow2 = k;
  if (mode == 1)
  {
    t->cursor = (gint64) (w % capacity) - (gint64) capacity;
    entry[6] = w % capacity;          /* the slot_cursor scratch word */
  }
  else
  {
    /* a chunk another producer began was reserved by it (docs/store-format.md) */
    guint64 end = (w + chunk - 1) / chunk * chunk;
    t->reserved_end = end;
    t->cursor = (gint64) w - (gint64) end;
    if (end == w)
    {
      bt_stream_slow (t);             /* at a chunk boundary: reserve the next chunk */
    }
    else
    {
      guint64 slot = end % capacity;
      entry[7] = end;
      t->chunk_end = GPOINTER_TO_SIZE (region) + (slot == 0 ? capacity : slot) * 4;
    }
  }
}
