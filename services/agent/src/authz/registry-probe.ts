/** The authorization check at the registry: a HEAD of the requested path, as the client. */
import { randomBytes } from 'node:crypto';

import { digestOf, parseDigest, type Digest } from '@shoal/proto';
import {
  readAnswer,
  StorageRefusedError,
  type UpstreamAnswer,
  type UpstreamResponse,
} from '@shoal/registry';

import type { RegistryRequests } from '../upstream/registry-requests.js';
import type { AuthzProbe, AuthzSubject, ProbeAnswer } from './authorizer.js';

const REDIRECTS = new Set([301, 302, 303, 307, 308]);
/** Largest manifest read to check a redirect leads to it, in bytes. */
const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

/**
 * A probe that HEADs `/v2/<repository>/{blobs,manifests}/<digest>` at the registry with the
 * client's own Authorization header. A HEAD moves no content and is not counted against pull
 * rate limits.
 *
 * A 2xx that names the digest asked for (`Docker-Content-Digest`, which registries send) is the
 * registry's word that it would serve this client this content. Anything less proves less: a
 * login proxy answers anyone with its sign-in page, in place (200) or by a redirect to it, and
 * some registries redirect every request whatever they hold (registry.k8s.io, to a backend
 * that checks). So:
 * - a redirect is followed, as for a pull (the credentials never carried to another origin),
 *   and the content looked for where it leads;
 * - a manifest, where the redirect leads or in place, must be there and match its digest;
 * - a blob's first byte must be there (a GET with `Range: bytes=0-0`, as storage URLs are often
 *   signed for GET only): a 206 of `bytes 0-0/<size>`, not a web page, of the blob's size when
 *   the node knows it; in place, a 2xx that is not a web page, of that size if it says one;
 *   and the same look for a digest nothing holds must find nothing, or what answers, answers
 *   whatever is asked (`anything`: the authorizer has the content read from the registry).
 * Such a yes holds for the request it answered (`once`), for a blob of the size shown, and is
 * not remembered: the registry did not say it. Content not found is the redirect's or the
 * registry's own answer (a redirect: the authorizer has the content read from the registry,
 * never from what the node holds). A 429 from the registry itself is the probe's answer too
 * (the authorizer takes it as the registry not answering); one from another origin counts as
 * the content not found.
 */
export function registryProbe(requests: RegistryRequests): AuthzProbe {
  return async (subject, signal) => {
    const first = await probeOnce(requests, subject, signal);
    if (first.once?.size === undefined) {
      return first;
    }
    // A blob shown, but not named by the registry: the control, a digest nothing holds, in
    // the same repository, looked for whatever its size.
    const control = await probeOnce(
      requests,
      {
        registry: subject.registry,
        repository: subject.repository,
        kind: subject.kind,
        digest: parseDigest(`sha256:${randomBytes(32).toString('hex')}`),
        authorization: subject.authorization,
      },
      signal,
    );
    if (control.status === 429) {
      return control;
    }
    if (control.status >= 200 && control.status < 300) {
      // It answers for anything: what it showed says nothing of this blob.
      return { ...(first.redirect ?? first), anything: true };
    }
    return first;
  };
}

/** One look at the registry: its answer, and how far it proves the content is there. */
type Look = ProbeAnswer & {
  /** The redirect that led to content shown (`once`). */
  readonly redirect?: UpstreamAnswer;
};

/** The registry's answer to one HEAD, the content looked for as its answer says (see above). */
async function probeOnce(
  requests: RegistryRequests,
  subject: AuthzSubject,
  signal: AbortSignal,
): Promise<Look> {
  const path = probePath(subject);
  const response = await requests.send({
    registry: subject.registry,
    method: 'HEAD',
    kind: subject.kind,
    path,
    headers: {
      authorization: subject.authorization,
      ...(subject.kind === 'manifest' ? { accept: MANIFEST_TYPES } : {}),
    },
    signal,
    redirects: 'manual',
  });
  const answer = await readAnswer(response);
  const ok = answer.status >= 200 && answer.status < 300;
  if (ok && namesDigest(answer, subject.digest)) {
    return answer;
  }
  if (!ok && !REDIRECTS.has(answer.status)) {
    return answer;
  }
  if (ok && subject.kind === 'blob') {
    // A yes in place that does not name the blob: as good as the size it shows.
    const size = shownLength(answer, subject.size);
    return size === undefined ? { ...answer, anything: true } : { ...answer, once: { size } };
  }
  const found = await lookFor(requests, subject, path, signal);
  if (found === undefined) {
    // Not there: a redirect stays the answer (the content is read from the registry); a yes
    // in place that was not the manifest is a page answering for anything.
    return ok ? { ...answer, anything: true } : answer;
  }
  return REDIRECTS.has(answer.status) && found.once !== undefined
    ? { ...found, redirect: answer }
    : found;
}

/** Whether a 2xx answer names `digest` in its `Docker-Content-Digest`. */
function namesDigest(answer: UpstreamAnswer, digest: Digest): boolean {
  const named = answer.headers['docker-content-digest'];
  return typeof named === 'string' && named.trim() === digest.toString();
}

/**
 * The blob size a 2xx HEAD in place shows: its Content-Length, when it is not a web page and
 * is of the blob's size when the node knows it; else undefined.
 */
function shownLength(answer: UpstreamAnswer, size: number | undefined): number | undefined {
  const type = String(answer.headers['content-type'] ?? '').toLowerCase();
  const length = Number(answer.headers['content-length'] ?? Number.NaN);
  if (type.startsWith('text/html') || !Number.isSafeInteger(length) || length < 0) {
    return undefined;
  }
  return size === undefined || length === size ? length : undefined;
}

/**
 * The content looked for by a GET as the client, redirects followed: a 429 answer; a manifest
 * that matches its digest (a yes; `once` when it came from elsewhere than the registry); a
 * blob's first byte (`once`, with the size shown); or undefined when it is not there. Throws
 * when that cannot be told (no answer in time).
 */
async function lookFor(
  requests: RegistryRequests,
  subject: AuthzSubject,
  path: string,
  signal: AbortSignal,
): Promise<ProbeAnswer | undefined> {
  const blob = subject.kind === 'blob';
  let response: UpstreamResponse;
  try {
    response = await requests.send({
      registry: subject.registry,
      method: 'GET',
      kind: subject.kind,
      path,
      headers: {
        authorization: subject.authorization,
        ...(blob ? { range: 'bytes=0-0' } : { accept: MANIFEST_TYPES }),
      },
      signal,
      // A look, not a pull: a hold from an earlier 429 does not answer it (its own 429 does).
      started: true,
    });
  } catch (error) {
    if (
      error instanceof StorageRefusedError ||
      (error instanceof Error && error.cause instanceof StorageRefusedError)
    ) {
      // Where the redirect leads has nothing for this path (or will not say to whom asks).
      return undefined;
    }
    throw error;
  }
  if (response.status === 429) {
    return readAnswer(response);
  }
  if (blob) {
    const shown = firstByteSize(response, subject.size);
    if (shown === undefined) {
      // A 200 to a ranged GET may be the whole content (or a login page): not read.
      response.body.destroy();
      return undefined;
    }
    return { ...(await readAnswer(response)), once: { size: shown } };
  }
  if (response.status !== 200) {
    response.body.destroy();
    return undefined;
  }
  const manifest = await readUpTo(response, MAX_MANIFEST_BYTES);
  if (
    manifest === undefined ||
    digestOf(manifest, subject.digest.algorithm).toString() !== subject.digest.toString()
  ) {
    return undefined;
  }
  const answer = { status: 200, headers: response.headers, body: Buffer.alloc(0) };
  // From where the registry sent it, the manifest is that place's, not the registry's word.
  return response.redirected === true ? { ...answer, once: {} } : answer;
}

/**
 * The size of the object whose first byte a ranged GET's answer is, or undefined when it is
 * not the first byte of the blob: it must be a 206 of `bytes 0-0/<size>`, of the blob's own
 * size when the node knows it, and not a web page (a sign-in page served by a file server
 * that honours ranges answers a 206 too).
 */
function firstByteSize(response: UpstreamResponse, size: number | undefined): number | undefined {
  const range = /^bytes 0-0\/(\d+)$/.exec(String(response.headers['content-range'] ?? ''));
  const type = String(response.headers['content-type'] ?? '').toLowerCase();
  if (response.status !== 206 || range === null || type.startsWith('text/html')) {
    return undefined;
  }
  const total = Number(range[1]);
  return Number.isSafeInteger(total) && (size === undefined || total === size) ? total : undefined;
}

/** The whole body, or undefined past `limit` bytes (the rest left unread). */
async function readUpTo(response: UpstreamResponse, limit: number): Promise<Buffer | undefined> {
  const chunks: Buffer[] = [];
  let length = 0;
  for await (const chunk of response.body as AsyncIterable<Buffer>) {
    length += chunk.length;
    if (length > limit) {
      response.body.destroy();
      return undefined;
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

function probePath(subject: AuthzSubject): string {
  const segment = subject.kind === 'blob' ? 'blobs' : 'manifests';
  return `/v2/${subject.repository}/${segment}/${subject.digest.toString()}`;
}

/** Every manifest type a registry may hold, so that a HEAD by digest is never refused for its type. */
const MANIFEST_TYPES = [
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.docker.distribution.manifest.v1+prettyjws',
  '*/*',
].join(', ');
