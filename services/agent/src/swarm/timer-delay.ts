/**
 * How long to set a timer for, to wake at (not before) a deadline `remainingMs` away.
 *
 * A Node timer counts from the event loop's clock, which is read in whole milliseconds at the
 * start of each turn: it can fire a little before `Date.now()` or `performance.now()` says the
 * deadline has come (by the rounding, and by however long the turn that set it had run). A
 * loop woken early sees nothing due and sets another timer for the fraction left: a second
 * wake-up for nothing. Aiming a few milliseconds past the deadline absorbs that.
 */
export function timerDelay(remainingMs: number): number {
  // Past the largest delay setTimeout takes, it fires at once: the caller looks again then.
  return Math.min(Math.max(0, remainingMs) + TIMER_LATE_MS, 2 ** 31 - 1);
}

/** How far past a deadline a timer is aimed (ms). */
const TIMER_LATE_MS = 4;
