/** Counts timer callbacks in this process: what an idle agent must not spend per second. */
import { createHook } from 'node:async_hooks';

/** Timer callbacks run in this process while `during` runs. */
export async function timerCallbacks(during: () => Promise<void>): Promise<number> {
  const timers = new Set<number>();
  let fired = 0;
  const hook = createHook({
    init: (id, type) => {
      if (type === 'Timeout') {
        timers.add(id);
      }
    },
    before: (id) => {
      if (timers.has(id)) {
        fired += 1;
      }
    },
  });
  hook.enable();
  try {
    await during();
  } finally {
    hook.disable();
  }
  return fired;
}
