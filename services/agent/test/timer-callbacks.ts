/** Counts timer callbacks in this process: what an idle agent must not spend per second. */
import { createHook } from 'node:async_hooks';

/** The timer callbacks run while `during` ran: how many, and where each timer was set. */
export interface TimerCallbacks {
  readonly fired: number;
  /** For each callback, the first frame of the stack that set its timer outside Node itself. */
  readonly sites: readonly string[];
}

/** Timer callbacks run in this process while `during` runs. */
export async function timerCallbacks(during: () => Promise<void>): Promise<TimerCallbacks> {
  const timers = new Map<number, string>();
  const sites: string[] = [];
  const hook = createHook({
    init: (id, type) => {
      if (type === 'Timeout') {
        timers.set(id, callerOutsideNode(new Error().stack ?? ''));
      }
    },
    before: (id) => {
      const site = timers.get(id);
      if (site !== undefined) {
        sites.push(site);
      }
    },
  });
  hook.enable();
  try {
    await during();
  } finally {
    hook.disable();
  }
  return { fired: sites.length, sites };
}

/** The first frame of `stack` in a file of ours or a package's, not Node's own. */
function callerOutsideNode(stack: string): string {
  const frames = stack.split('\n').slice(1);
  const frame = frames.find((line) => !line.includes('node:') && !line.includes('timer-callbacks'));
  return frame?.trim() ?? 'unknown';
}
