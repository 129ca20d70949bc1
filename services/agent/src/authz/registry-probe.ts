/** The authorization check at the registry: a HEAD of the requested path, as the client. */
import { readAnswer, type UpstreamAnswer } from '@shoal/registry';

import type { RegistryRequests } from '../upstream/registry-requests.js';
import type { AuthzProbe, AuthzSubject } from './authorizer.js';

const REDIRECTS = new Set([301, 302, 303, 307, 308]);

/**
 * A probe that HEADs `/v2/<repository>/{blobs,manifests}/<digest>` at the registry with the
 * client's own Authorization header: a 2xx means the registry would serve this client this
 * content. A HEAD moves no content and is not counted against pull rate limits.
 *
 * A redirect says less: registries send authorized requests to their storage that way after
 * checking the content is there, but some redirect every request whatever they hold
 * (registry.k8s.io, to a backend that checks). So the content is then looked for where the
 * redirect leads: one byte of it, a GET with `Range: bytes=0-0` (storage URLs are often signed
 * for GET only), redirects followed as for a pull, the credentials never carried to another
 * origin. Its 2xx is the answer; when it cannot be read there, the redirect itself is (the
 * authorizer then has the content read from the registry, never from what the node holds).
 */
export function registryProbe(requests: RegistryRequests): AuthzProbe {
  return async (subject, signal) => {
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
    if (!REDIRECTS.has(answer.status)) {
      return answer;
    }
    return (await readOneByte(requests, subject, path, signal)) ?? answer;
  };
}

/**
 * The first byte of the content, read through the registry's redirects: a 2xx answer (its
 * body dropped unread), or undefined when the content could not be read there.
 */
async function readOneByte(
  requests: RegistryRequests,
  subject: AuthzSubject,
  path: string,
  signal: AbortSignal,
): Promise<UpstreamAnswer | undefined> {
  try {
    const response = await requests.send({
      registry: subject.registry,
      method: 'GET',
      kind: subject.kind,
      path,
      headers: {
        authorization: subject.authorization,
        range: 'bytes=0-0',
        ...(subject.kind === 'manifest' ? { accept: MANIFEST_TYPES } : {}),
      },
      signal,
    });
    if (response.status === 200 || response.status === 206) {
      // A 200 that ignored the range would be the whole content: not read.
      response.body.destroy();
      return { status: response.status, headers: response.headers, body: Buffer.alloc(0) };
    }
    response.body.destroy();
    return undefined;
  } catch {
    // The storage refused, the backend did not answer: the redirect is all there is.
    return undefined;
  }
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
