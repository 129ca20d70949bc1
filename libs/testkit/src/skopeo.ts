/** skopeo as a client: copies between OCI layouts and registries, over plain HTTP. */
import { requireBinary, run } from './process.js';

export interface CopyOptions {
  /** `user:password` for the source registry. */
  readonly srcCreds?: string;
  /** `user:password` for the destination registry. */
  readonly destCreds?: string;
  readonly timeoutMs?: number;
}

/** `skopeo copy` without TLS verification (test registries and the agent speak plain HTTP). */
export async function skopeoCopy(
  source: string,
  destination: string,
  options: CopyOptions = {},
): Promise<void> {
  const binary = requireBinary('skopeo');
  await run(
    binary,
    [
      '--insecure-policy',
      'copy',
      '--src-tls-verify=false',
      '--dest-tls-verify=false',
      ...(options.srcCreds === undefined ? ['--src-no-creds'] : ['--src-creds', options.srcCreds]),
      ...(options.destCreds === undefined ? [] : ['--dest-creds', options.destCreds]),
      source,
      destination,
    ],
    { timeoutMs: options.timeoutMs ?? 600_000 },
  );
}
