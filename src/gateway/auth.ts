/**
 * Maps a presented API key to the tenant or admin it belongs to. Keys are held only as sha256 digests
 * (see config.ts); a presented key is hashed and compared against every stored digest.
 *
 * HTTP requests send `Authorization: Bearer <key>`. A WebSocket handshake may do the same, or — because browsers
 * cannot set headers on a WebSocket — offer the subprotocol `openai-insecure-api-key.<key>`, as OpenAI's realtime
 * API does. Keys in query strings are refused: URLs are written to access logs by proxies and load balancers.
 */

import { timingSafeEqual } from 'node:crypto';
import { sha256Digest, type GatewaySettings, type TenantSettings } from './config.ts';

export type Principal = { kind: 'tenant'; tenant: TenantSettings } | { kind: 'admin' };

export const API_KEY_SUBPROTOCOL_PREFIX = 'openai-insecure-api-key.';

export interface WebSocketHandshake {
  /** The `Authorization` request header. */
  authorization?: string;
  /** The `Sec-WebSocket-Protocol` request header: a comma-separated list of offered subprotocols. */
  protocols?: string;
}

export interface Authenticator {
  /** Null for a missing or malformed header and for an unknown key; callers answer 401 either way. */
  authenticate(authorizationHeader: string | undefined): Principal | null;
  /** An `Authorization` header, when present, is the only credential considered. */
  authenticateWebSocket(handshake: WebSocketHandshake): Principal | null;
  /**
   * For pages a browser opens: `Bearer <key>`, or HTTP Basic with the key as the password (any user name), since a
   * browser asks for Basic credentials itself and then sends them with the page's own requests.
   */
  authenticatePage(authorizationHeader: string | undefined): Principal | null;
}

/**
 * True for the subprotocol that carries the key: a server must never select it, or the key would be echoed in the
 * handshake response. A browser client offers a real subprotocol alongside it for the server to select.
 */
export function isApiKeySubprotocol(protocol: string): boolean {
  return protocol.trim().startsWith(API_KEY_SUBPROTOCOL_PREFIX);
}

function bearerKey(authorizationHeader: string | undefined): string | null {
  const match = /^Bearer +(\S+) *$/i.exec(authorizationHeader ?? '');
  return match ? match[1] : null;
}

function basicPassword(authorizationHeader: string | undefined): string | null {
  const match = /^Basic +([A-Za-z0-9+/]+=*) *$/i.exec(authorizationHeader ?? '');
  if (!match) return null;
  const decoded = Buffer.from(match[1], 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  return colon >= 0 && colon < decoded.length - 1 ? decoded.slice(colon + 1) : null;
}

function subprotocolKey(protocolsHeader: string | undefined): string | null {
  const offered = (protocolsHeader ?? '').split(',').find(isApiKeySubprotocol);
  const key = offered?.trim().slice(API_KEY_SUBPROTOCOL_PREFIX.length);
  return key ? key : null;
}

export function createAuthenticator(settings: Pick<GatewaySettings, 'adminKeyDigests' | 'tenants'>): Authenticator {
  const admin: Principal = { kind: 'admin' };
  const entries: { digest: Buffer; principal: Principal }[] = [
    ...settings.adminKeyDigests.map((digest) => ({ digest, principal: admin })),
    ...settings.tenants.flatMap((tenant) => {
      const principal: Principal = { kind: 'tenant', tenant };
      return tenant.keyDigests.map((digest) => ({ digest, principal }));
    }),
  ];

  function identify(key: string | null): Principal | null {
    if (key === null) return null;
    const presented = sha256Digest(key);
    let matched: Principal | null = null;
    // No early exit: every digest is compared, so the time taken does not tell which entry matched, or whether any did.
    for (const entry of entries) {
      if (timingSafeEqual(entry.digest, presented)) matched = entry.principal;
    }
    return matched;
  }

  return {
    authenticate: (authorizationHeader) => identify(bearerKey(authorizationHeader)),
    authenticateWebSocket: ({ authorization, protocols }) =>
      identify(authorization !== undefined ? bearerKey(authorization) : subprotocolKey(protocols)),
    authenticatePage: (authorizationHeader) => identify(bearerKey(authorizationHeader) ?? basicPassword(authorizationHeader)),
  };
}
