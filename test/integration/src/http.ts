/** Raw HTTP requests for tests that must send exactly the bytes they mean (no URL clean-up). */
import { request } from 'node:http';
import { createHash } from 'node:crypto';

export interface RawResponse {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: Buffer;
}

/** Sends `path` unaltered (fetch would resolve `..`); collects a small response. */
export function rawGet(
  baseUrl: string,
  path: string,
  headers: Record<string, string> = {},
): Promise<RawResponse> {
  const url = new URL(baseUrl);
  return new Promise((resolve, reject) => {
    const req = request(
      { host: url.hostname, port: url.port, path, method: 'GET', headers, timeout: 30_000 },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: Buffer.concat(chunks),
          }),
        );
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', reject);
    req.end();
  });
}

/** The outcome of streaming a blob: bytes and digest, or the error that cut it. */
export interface StreamOutcome {
  readonly status: number;
  readonly bytes: number;
  readonly digest: string;
  readonly error: Error | undefined;
}

/** Streams a response body through a hash, without keeping it; notes whether it was cut. */
export async function streamDigest(url: string, init: RequestInit = {}): Promise<StreamOutcome> {
  const response = await fetch(url, { ...init, signal: AbortSignal.timeout(600_000) });
  const hash = createHash('sha256');
  let bytes = 0;
  let error: Error | undefined;
  try {
    if (response.body !== null) {
      for await (const chunk of response.body as AsyncIterable<Uint8Array>) {
        hash.update(chunk);
        bytes += chunk.length;
      }
    }
  } catch (caught) {
    error = caught as Error;
  }
  return { status: response.status, bytes, digest: `sha256:${hash.digest('hex')}`, error };
}

/** Parses an OCI error body and returns its first code. */
export function ociCode(body: Buffer | string): string | undefined {
  const parsed = JSON.parse(body.toString()) as { errors?: { code?: string }[] };
  return parsed.errors?.[0]?.code;
}
