/**
 * Errors with a name, a stable code and a cause. HTTP layers map `code` to a status and a
 * body; `message` is written for the operator or client reading it.
 */
export class ShoalError<Code extends string = string> extends Error {
  override readonly name: string = 'ShoalError';
  readonly code: Code;
  /** HTTP status for errors that reach a client. */
  readonly status: number;
  /** Extra detail safe to show a client (never credentials). */
  readonly detail: unknown;

  constructor(
    code: Code,
    status: number,
    message: string,
    options: { cause?: unknown; detail?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.status = status;
    this.detail = options.detail;
  }
}

/** True for errors raised by an AbortSignal (a timeout or a cancelled request). */
export function isAbortError(error: unknown): boolean {
  return (
    error instanceof Error &&
    (error.name === 'AbortError' ||
      error.name === 'TimeoutError' ||
      error.name === 'RequestAbortedError')
  );
}

/**
 * Connection errors that say nothing answers at an address or name, rather than that one
 * request went wrong: a refusal, no route, or a name that no longer resolves (in Kubernetes a
 * stopped pod's DNS name goes with it: ENOTFOUND, or EAI_AGAIN while the resolver cannot say).
 */
export const UNREACHABLE_CODES: ReadonlySet<string> = new Set([
  'ECONNREFUSED',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
]);

/** The error's code when it is one of `UNREACHABLE_CODES`. */
export function unreachableCode(error: unknown): string | undefined {
  const code: unknown = error instanceof Error ? (error as NodeJS.ErrnoException).code : undefined;
  return typeof code === 'string' && UNREACHABLE_CODES.has(code) ? code : undefined;
}
