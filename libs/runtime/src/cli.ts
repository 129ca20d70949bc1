/**
 * What Shoal's command-line tools (`shoal-preheat`, `shoal-why`, `shoal-doctor`) share: every
 * error ends the tool with one line on stderr and a documented exit code, never a stack trace.
 * Kept apart from the package's index so a CLI loads no logger, metrics or telemetry.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';

/** An error the user reads: its message is the whole line, `exitCode` what the tool returns. */
export class CliError extends Error {
  override readonly name = 'CliError';

  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
  }
}

/** Exit code of a usage error (unknown option, missing or malformed argument) in every tool. */
export const USAGE_EXIT = 2;

/**
 * `parseArgs` whose failures are usage errors worded for a person (`unknown option --x`),
 * rather than Node's advice about `--`.
 */
export function parseCliArgs<T extends ParseArgsConfig>(
  tool: string,
  config: T,
): ReturnType<typeof parseArgs<T>> {
  try {
    return parseArgs(config);
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    const message = error instanceof Error ? error.message : String(error);
    const option = /'(-[^' ]*)/.exec(message)?.[1];
    const reason =
      code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION'
        ? `unknown option ${option ?? message}`
        : code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE'
          ? `option ${option ?? ''} needs a value`.replace('  ', ' ')
          : code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL'
            ? `unexpected argument ${/'([^']*)'/.exec(message)?.[1] ?? message}`
            : message.split('\n')[0];
    throw new CliError(`${reason} (${tool} --help lists the options)`, USAGE_EXIT);
  }
}

/**
 * Why a `fetch` to `url` got no answer, in words: the connection error's code (ECONNREFUSED,
 * ENOTFOUND, a TLS error) or the timeout, rather than Node's bare "fetch failed".
 */
export function unreachableReason(error: unknown): string {
  if (error instanceof Error && (error.name === 'TimeoutError' || error.name === 'AbortError')) {
    return 'no answer in time';
  }
  const cause = (error as { cause?: { code?: unknown; message?: unknown } }).cause;
  if (typeof cause?.code === 'string') {
    return cause.code;
  }
  if (typeof cause?.message === 'string') {
    return cause.message;
  }
  return error instanceof Error ? error.message : String(error);
}

/**
 * Runs a tool's `main` and exits with its code. A CliError prints its one line and exits with
 * its code; anything else (a bug) prints one line too and exits with `unexpectedExit`.
 */
export async function runCli(
  tool: string,
  main: () => Promise<number>,
  unexpectedExit: number,
): Promise<never> {
  let code: number;
  try {
    code = await main();
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    process.stderr.write(`${tool}: ${message.replaceAll('\n', ' ')}\n`);
    code = error instanceof CliError ? error.exitCode : unexpectedExit;
  }
  // Let stdout drain (a pipe) before exiting.
  process.exitCode = code;
  await new Promise<void>((resolve) => process.stdout.write('', () => resolve()));
  process.exit(code);
}
