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
