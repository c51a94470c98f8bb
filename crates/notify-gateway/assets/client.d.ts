/**
 * Types of the notify browser client (`/client.js`), served beside it at `/client.d.ts`.
 * The wire contract is docs/PROTOCOL.md; the behaviour is the JSDoc header of client.js.
 */

/** ISO 3166-1 alpha-2 region code, uppercase on the wire (`"AE"`). */
export type RegionCode = string;

/** A stream entry id, `<ms>-<seq>` (`"1764290000123-0"`). */
export type StreamId = string;

/** A `new_trending` notification as the gateway delivers it. Unknown fields are kept. */
export interface TrendingNotification {
  event: 'new_trending';
  region: RegionCode;
  video_id: string;
  title: string;
  thumbnail: string;
  channel: string;
  rtl: boolean;
  /** Unix seconds. */
  ts: number;
  /** Absent for notifications published without a history (plain `PUBLISH`). */
  id?: StreamId;
  [field: string]: unknown;
}

/** The gateway's `resync`: notifications after `since` are not all available. */
export interface ResyncMessage {
  event: 'resync';
  region: RegionCode;
  since: StreamId;
  /** Absent when the region has no history yet. */
  latest?: StreamId;
  reason: string;
}

/** Connection states, in the order a connection normally goes through them. */
export type ConnectionState = 'connecting' | 'open' | 'reconnecting' | 'closed';

/** What `transport` may be set to. */
export type TransportOption = 'auto' | 'websocket' | 'sse';

/** The transport in use. */
export type Transport = 'websocket' | 'sse';

/** The second argument of `onState`. */
export interface StateDetail {
  region: RegionCode;
  attempt?: number;
  /** The wait before the next attempt, when reconnecting. */
  delayMs?: number;
  /** The close code of the last connection (WebSocket close code, or an SSE `close` event's). */
  code?: number;
  reason?: string;
  transport?: Transport;
}

export interface TrendingNotifierOptions {
  /** Default `"US"`; case-insensitive. Several regions on one connection: an array
   * (`["AE", "FI"]`) or a comma string (`"AE,FI"`). */
  region?: string | readonly string[];
  /** WebSocket base URL, e.g. `"wss://ws.example.com/"`. Default: the page's host. */
  url?: string | URL;
  /** Host (and port) instead of the page's, keeping the scheme rule. */
  host?: string;
  /** Show a toast per notification (default true). */
  toasts?: boolean;
  /** Element holding the toasts; default a fixed stack created on first use. */
  container?: HTMLElement;
  /** true (default): a small fixed status pill; false: none; or an element to keep updated. */
  status?: boolean | HTMLElement;
  /** Most toasts visible at once (default 4). */
  maxToasts?: number;
  /** How long a toast stays, in ms (default 5000). */
  toastMs?: number;
  /** First reconnect delay in ms (default 500), doubling per failed attempt. */
  backoffMs?: number;
  /** Reconnect delay cap in ms (default 30000). */
  maxBackoffMs?: number;
  /** Last id already seen; resume after it on the first connection. With several regions,
   * one id per region: `"AE:<id>,FI:<id>"` or `{ AE: "<id>", FI: "<id>" }`. */
  since?: StreamId | string | Readonly<Record<string, StreamId>>;
  /** Default `"auto"`: WebSocket, falling back to Server-Sent Events when upgrades fail. */
  transport?: TransportOption;
  /** WebSocket failures before opening that switch `"auto"` to SSE (default 2). */
  sseAfterFailures?: number;
  /** Opt-in: while the page is hidden and permission is granted, a system notification
   * instead of a toast. */
  backgroundNotices?: boolean;
  /** Connect from the constructor (default true). */
  autoConnect?: boolean;
  /** The toast heading; default `Trending in {region}`. */
  formatLabel?: (region: RegionCode) => string;
  onNotification?: (notification: TrendingNotification) => void;
  onState?: (state: ConnectionState, detail: StateDetail) => void;
  onResync?: (message: ResyncMessage) => void;
  onToastClick?: (notification: TrendingNotification) => void;
  /** WebSocket constructor (default `globalThis.WebSocket`). */
  WebSocket?: typeof WebSocket;
  /** EventSource constructor (default `globalThis.EventSource`). */
  EventSource?: typeof EventSource;
}

export class TrendingNotifier {
  constructor(options?: TrendingNotifierOptions);
  /** Asks for notification permission; call it from a user gesture. */
  static requestNoticePermission(): Promise<NotificationPermission>;
  readonly options: TrendingNotifierOptions;
  readonly state: ConnectionState;
  /** The region, or the regions comma-separated (`"AE,FI"`). */
  readonly region: string;
  /** The regions, in the order asked. */
  readonly regions: readonly RegionCode[];
  /** The id of the last notification shown (or a `resync`'s `latest`), of any region. */
  readonly lastId: StreamId | null;
  /** Per region, the id of its last notification shown (or its `resync`'s `latest`). */
  readonly lastIds: Readonly<Record<RegionCode, StreamId>>;
  /** The transport in use (or next). */
  readonly transport: Transport;
  /** The URL of the current or next connection. */
  readonly url: string;
  /** Opens the connection (again) after `close()` or with `autoConnect: false`. */
  connect(): void;
  /** Switches region (one, or several): reconnects at once and forgets the previous regions'
   * last ids. */
  setRegion(region: string | readonly string[]): void;
  /** Shows one notification as a toast and returns its element. */
  showToast(notification: TrendingNotification): HTMLElement;
  /** Stops for good: no reconnects. */
  close(): void;
}

/** Right-to-left regions and their language's BCP 47 tag. */
export const RIGHT_TO_LEFT: Readonly<Record<RegionCode, string>>;
export const STATES: readonly ConnectionState[];
export const TRANSPORTS: readonly TransportOption[];
export function rtlLanguage(region: string): string | null;
/** Uppercases a region code; throws `TypeError` on anything but two ASCII letters. */
export function normalizeRegion(region: string): RegionCode;
/** Distinct uppercased codes of one region or several (an array, or a comma string). */
export function normalizeRegions(regions: string | readonly string[]): RegionCode[];
/** Region → id of a resume position (a bare id for one region, `"AE:<id>,FI:<id>"`, or an
 * object), for the regions asked. */
export function parsePositions(
  since: StreamId | string | Readonly<Record<string, StreamId>> | null | undefined,
  regions: readonly RegionCode[],
): Record<RegionCode, StreamId>;
/** The `since` sent: the bare id for one region, `"AE:<id>,FI:<id>"` for several; null when
 * none is known. */
export function sinceParam(
  regions: readonly RegionCode[],
  lastIds: Readonly<Record<RegionCode, StreamId>>,
): string | null;
export function safeImageUrl(value: unknown): string | null;
export function backoffDelay(attempt: number, baseMs?: number, capMs?: number, random?: () => number): number;
/** The Server-Sent Events URL beside a WebSocket base URL. */
export function eventsUrl(webSocketBase: string | URL): URL;

export default TrendingNotifier;
