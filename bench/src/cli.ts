/** What every benchmark's command line shares: parsing, the common options, progress lines. */
import { execFile } from 'node:child_process';
import { setMaxListeners } from 'node:events';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify, type ParseArgsConfig } from 'node:util';

import { Teardown } from '@shoal/testkit';

const MiB = 1024 * 1024;

/** Option values as `parseArgs` gives them, read by name. */
export type OptionValues = Readonly<Record<string, string | boolean | undefined>>;

/** Parses `argv`; prints the usage and exits (2 on an error, 0 for --help). */
export function readOptions(
  argv: readonly string[],
  usage: string,
  options: NonNullable<ParseArgsConfig['options']>,
): OptionValues {
  let values: Record<string, string | boolean | (string | boolean)[] | undefined>;
  try {
    ({ values } = parseArgs({
      args: [...argv],
      options: { ...options, help: { type: 'boolean', default: false } },
    }));
  } catch (error) {
    process.stderr.write(`${(error as Error).message}\n\n${usage}`);
    process.exit(2);
  }
  if (values.help === true) {
    process.stdout.write(usage);
    process.exit(0);
  }
  return Object.fromEntries(
    Object.entries(values).map(([name, value]) => [name, Array.isArray(value) ? value[0] : value]),
  );
}

/** `--agents`, `--layers` (MiB) and `--timeout-s`, checked; problems are added to `problems`. */
export function commonOptions(
  values: OptionValues,
  problems: string[],
): { agents: number; layerSizes: number[]; timeoutMs: number } {
  const agents = Number(values.agents);
  if (!Number.isInteger(agents) || agents < 1 || agents > 64) {
    problems.push('--agents takes a whole number from 1 to 64');
  }
  const layerSizes = String(values.layers)
    .split(',')
    .map((s) => Math.round(Number(s) * MiB));
  if (layerSizes.some((s) => !Number.isFinite(s) || s <= 0)) {
    problems.push('--layers takes sizes in MiB, e.g. 128,16');
  }
  const timeoutS = Number(values['timeout-s']);
  if (!Number.isFinite(timeoutS) || timeoutS <= 0) {
    problems.push('--timeout-s takes a positive number of seconds');
  }
  return { agents, layerSizes, timeoutMs: timeoutS * 1000 };
}

/** Prints every problem at once, with the usage, and exits 2; nothing when there are none. */
export function exitOnProblems(problems: readonly string[], usage: string): void {
  if (problems.length > 0) {
    process.stderr.write(`${problems.join('\n')}\n\n${usage}`);
    process.exit(2);
  }
}

/** Longest the page cache's write-back may take before a measured pull, in ms. */
const SETTLE_MS = 120_000;

/**
 * Writes every dirty page back (`sync`) before a measured pull, outside its clock: a pull
 * writes its image (containerd's content store and snapshot, the agents' and the seed's caches),
 * and without this the next pull pays for that write-back; the data-path bench's first warm
 * pull, right after the cold one, was slower for it in every run.
 */
export async function settleDisk(): Promise<void> {
  await promisify(execFile)('sync', [], { timeout: SETTLE_MS });
}

/** A progress line on standard error, apart from the results on standard output. */
export function progress(line: string): void {
  process.stderr.write(`[bench] ${line}\n`);
}

/** Teardown that reports a failed step and goes on. */
export function newTeardown(): Teardown {
  return new Teardown((what, error) => progress(`stopping ${what} failed: ${error.message}`));
}

export function mean(values: readonly number[]): number {
  return values.length === 0 ? Number.NaN : values.reduce((a, b) => a + b, 0) / values.length;
}

/** Aborts on SIGINT/SIGTERM, so a run stops and tears down; `release` stops listening. */
export function interruptOnSignal(): { signal: AbortSignal; release(): void } {
  const interrupt = new AbortController();
  // Every node's pull, sampler and teardown step listens at once: twelve nodes passed Node's
  // default warning mark of ten (a warning, not a leak).
  setMaxListeners(64, interrupt.signal);
  const onSignal = (): void => {
    progress('interrupted: stopping everything');
    interrupt.abort(new Error('interrupted'));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  return {
    signal: interrupt.signal,
    release: () => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    },
  };
}

/** Runs a benchmark's `main` as the process: its exit code, or 1 with the error on stderr. */
export async function runBench(main: () => Promise<number>): Promise<void> {
  try {
    process.exitCode = await main();
  } catch (error) {
    process.stderr.write(
      `bench failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
    );
    process.exitCode = 1;
  }
}

/**
 * Environment that makes a service started by the test kit write a V8 CPU profile
 * (`<pid>.cpuprofile`) into `dir` when it exits (see sim/cpu-profile.ts); empty when `dir` is
 * undefined.
 */
export function cpuProfileEnv(dir: string | undefined): Record<string, string> {
  if (dir === undefined) {
    return {};
  }
  return {
    NODE_OPTIONS: `--import=${fileURLToPath(new URL('./sim/cpu-profile.js', import.meta.url))}`,
    SHOAL_SIM_CPU_PROF_DIR: dir,
  };
}

/** Kept here for the simulators' imports; one copy lives in the test kit. */
export { seededRandom } from '@shoal/testkit';
