/**
 * HTTP requests written byte for byte on a socket, for fuzzing: a request line, headers and a
 * body that no HTTP client library would agree to send. Only the status line, the headers and
 * the first bytes of the body are read; the connection is closed after them.
 */
import { connect } from 'node:net';

export interface RawRequest {
  readonly method: string;
  /** The request target exactly as it goes on the wire. */
  readonly target: string;
  readonly headers?: readonly (readonly [string, string])[];
  readonly body?: Uint8Array;
}

export interface RawAnswer {
  /**
   * The status code, or 0 when the server closed the connection without an answer we could
   * read (e.g. it refused a large body and closed while it was still being sent).
   */
  readonly status: number;
  readonly headers: Readonly<Record<string, string>>;
  /** The first bytes of the body (at most `maxBodyBytes`). */
  readonly body: Buffer;
}

/** Sends one request on a new connection; resolves with what came back before `timeoutMs`. */
export function sendRaw(
  port: number,
  request: RawRequest,
  timeoutMs = 15_000,
  maxBodyBytes = 64 * 1024,
): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port });
    const chunks: Buffer[] = [];
    let received = 0;
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no answer within ${String(timeoutMs)} ms`));
    }, timeoutMs);
    const finish = (): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(parseAnswer(Buffer.concat(chunks)));
    };
    socket.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      received += chunk.length;
      const text = Buffer.concat(chunks);
      const headerEnd = text.indexOf('\r\n\r\n');
      if (headerEnd !== -1 && received - headerEnd - 4 >= maxBodyBytes) {
        finish();
      }
    });
    socket.on('end', finish);
    socket.on('close', finish);
    socket.on('error', (error: NodeJS.ErrnoException) => {
      // A server that closes or resets the connection while the request is still being sent
      // has refused it (its answer, if any, may be lost with the connection).
      if (chunks.length > 0 || error.code === 'EPIPE' || error.code === 'ECONNRESET') {
        finish();
      } else {
        clearTimeout(timer);
        reject(error);
      }
    });
    const lines = [`${request.method} ${request.target} HTTP/1.1`, 'Host: 127.0.0.1'];
    for (const [name, value] of request.headers ?? []) {
      lines.push(`${name}: ${value}`);
    }
    if (request.body !== undefined) {
      lines.push(`Content-Length: ${String(request.body.length)}`);
    }
    lines.push('Connection: close', '', '');
    socket.write(Buffer.from(lines.join('\r\n'), 'latin1'));
    if (request.body !== undefined) {
      socket.write(request.body);
    }
  });
}

function parseAnswer(bytes: Buffer): RawAnswer {
  const headerEnd = bytes.indexOf('\r\n\r\n');
  const head = bytes.subarray(0, headerEnd === -1 ? bytes.length : headerEnd).toString('latin1');
  const [statusLine = '', ...headerLines] = head.split('\r\n');
  const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(statusLine)?.[1] ?? 0);
  const headers: Record<string, string> = {};
  for (const line of headerLines) {
    const colon = line.indexOf(':');
    if (colon > 0) {
      headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
    }
  }
  return {
    status,
    headers,
    body: headerEnd === -1 ? Buffer.alloc(0) : bytes.subarray(headerEnd + 4),
  };
}
