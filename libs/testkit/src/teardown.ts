/** Teardown steps for tests, benchmarks and the demo: run newest first, every one of them. */
export class Teardown {
  readonly #steps: { what: string; step: () => Promise<void> }[] = [];
  readonly #onError: (what: string, error: Error) => void;

  /** `onError` hears about a step that failed; the others still run. */
  constructor(onError: (what: string, error: Error) => void = () => undefined) {
    this.#onError = onError;
  }

  add(what: string, step: () => Promise<void>): void {
    this.#steps.push({ what, step });
  }

  async run(): Promise<void> {
    for (let entry = this.#steps.pop(); entry !== undefined; entry = this.#steps.pop()) {
      try {
        await entry.step();
      } catch (error) {
        this.#onError(entry.what, error instanceof Error ? error : new Error(String(error)));
      }
    }
  }
}
