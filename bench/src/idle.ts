#!/usr/bin/env node
/**
 * The idle benchmark: what Shoal's processes cost while nothing is pulled, which is how a
 * node's agent spends nearly all its life. It starts a stack (a nats-server, a registry, a
 * tracker, a seed server and an agent in the swarm), lets it settle, then reads each
 * process's CPU time from /proc/PID/stat over a window and prints it per second of wall time.
 * With `--baseline DIR` a second stack runs the services built at DIR (`build-at.sh`), with its
 * own nats-server, in the same minutes, and each figure gets its ratio to the baseline's.
 *
 *   node bench/dist/src/idle.js [--seconds 60] [--settle-s 10] [--baseline DIR]
 *
 * It reports figures; it never asserts a time.
 */
import { setTimeout as sleep } from 'node:timers/promises';

import {
  ratio,
  readProcCost,
  startAgent,
  startNats,
  startRegistry,
  startSeedServer,
  startTracker,
  table,
  type Teardown,
} from '@shoal/testkit';

import {
  exitOnProblems,
  interruptOnSignal,
  newTeardown,
  progress,
  readOptions,
  runBench,
} from './cli.js';

const USAGE = `usage: node bench/dist/src/idle.js [--seconds S] [--settle-s S] [--baseline DIR]

  --seconds S     the measured window, in seconds (default 60)
  --settle-s S    wait this long after the stack is up before measuring (default 10): start-up
                  work (module loading, the first NATS round trips) is not idle work
  --baseline DIR  a second stack runs the services built at DIR (a checkout built with tsc -b,
                  e.g. by services/seedserver/tools/build-at.sh) in the same window
`;

/** The processes measured, in the order printed. */
const ROLES = ['agent', 'tracker', 'seed server', 'nats-server'] as const;
type Role = (typeof ROLES)[number];

/** Starts one idle stack (this checkout's services, or those built at `buildRoot`). */
async function startStack(
  teardown: Teardown,
  buildRoot: string | undefined,
): Promise<Record<Role, number>> {
  const nats = await startNats();
  teardown.add('nats-server', () => nats.stop());
  const registry = await startRegistry();
  teardown.add('registry', () => registry.stop());
  const registries = `${registry.host}=${registry.url}`;
  const build = buildRoot === undefined ? {} : { buildRoot };
  const tracker = await startTracker({ natsUrl: nats.url, ...build });
  teardown.add('tracker', () => tracker.stop());
  const seed = await startSeedServer({ natsUrl: nats.url, registries, ...build });
  teardown.add('seed server', () => seed.stop());
  const agent = await startAgent({ registries, natsUrl: nats.url, ...build });
  teardown.add('agent', () => agent.stop());
  const pid = (child: { readonly pid?: number | undefined }): number => {
    if (child.pid === undefined) {
      throw new Error('a process of the stack has no pid');
    }
    return child.pid;
  };
  return {
    agent: pid(agent.process.child),
    tracker: pid(tracker.process.child),
    'seed server': pid(seed.process.child),
    'nats-server': pid(nats.process.child),
  };
}

/** CPU seconds of every process of a stack so far. */
async function cpuOf(pids: Record<Role, number>): Promise<Record<Role, number>> {
  const entries = await Promise.all(
    ROLES.map(async (role) => [role, (await readProcCost(pids[role])).cpuSeconds] as const),
  );
  return Object.fromEntries(entries) as Record<Role, number>;
}

async function main(): Promise<number> {
  const values = readOptions(process.argv.slice(2), USAGE, {
    seconds: { type: 'string', default: '60' },
    'settle-s': { type: 'string', default: '10' },
    baseline: { type: 'string' },
  });
  const windowS = Number(values.seconds);
  const settleS = Number(values['settle-s']);
  const baseline = typeof values.baseline === 'string' ? values.baseline : undefined;
  const problems: string[] = [];
  if (!Number.isFinite(windowS) || windowS < 5 || windowS > 3600) {
    problems.push('--seconds takes a number of seconds from 5 to 3600');
  }
  if (!Number.isFinite(settleS) || settleS < 0 || settleS > 600) {
    problems.push('--settle-s takes a number of seconds from 0 to 600');
  }
  exitOnProblems(problems, USAGE);

  // Interrupted (SIGINT, SIGTERM) during a wait, the run still stops every process it started.
  const interrupt = interruptOnSignal();
  const teardown = newTeardown();
  try {
    progress('starting the stack');
    const stacks: { name: string; pids: Record<Role, number> }[] = [
      { name: 'this build', pids: await startStack(teardown, undefined) },
    ];
    if (baseline !== undefined) {
      progress(`starting the baseline's stack (${baseline})`);
      stacks.push({ name: 'baseline', pids: await startStack(teardown, baseline) });
    }
    progress(`settling for ${String(settleS)} s, then measuring for ${String(windowS)} s`);
    await sleep(settleS * 1000, undefined, { signal: interrupt.signal });
    const before = await Promise.all(stacks.map((stack) => cpuOf(stack.pids)));
    const startedAt = performance.now();
    await sleep(windowS * 1000, undefined, { signal: interrupt.signal });
    const after = await Promise.all(stacks.map((stack) => cpuOf(stack.pids)));
    const elapsedS = (performance.now() - startedAt) / 1000;

    /** CPU ms per second of wall time of `role` in stack `i`. */
    const msPerS = (i: number, role: Role): number =>
      ((after[i]?.[role] ?? 0) - (before[i]?.[role] ?? 0)) * (1000 / elapsedS);
    const header = ['process', ...stacks.map((s) => `${s.name} CPU ms/s`)];
    if (stacks.length > 1) {
      header.push('this ÷ baseline');
    }
    const rows = ROLES.map((role) => {
      const row = [role, ...stacks.map((_, i) => msPerS(i, role).toFixed(1))];
      if (stacks.length > 1) {
        row.push(ratio(msPerS(0, role) / msPerS(1, role)));
      }
      return row;
    });
    process.stdout.write(
      `Idle benchmark: CPU time of each process over ${elapsedS.toFixed(1)} s with nothing pulled\n\n`,
    );
    process.stdout.write(`${table(header, rows)}\n\n`);
    process.stdout.write(
      'CPU ms/s: utime + stime from /proc/PID/stat over the window, per second of wall time\n' +
        '(10 ms/s is 1% of a core); /proc counts in ticks of 10 ms, so short windows are coarse.\n',
    );
    return 0;
  } finally {
    await teardown.run();
    interrupt.release();
  }
}

await runBench(main);
