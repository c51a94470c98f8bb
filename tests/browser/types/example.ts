// A page using the typed client as its README shows; checked by `tsc --noEmit` in
// types.test.js. Each `@ts-expect-error` is a misuse the declarations must reject: were they
// too loose (e.g. `any`), tsc would fail on the unused directive.
import TrendingNotifier, {
  TrendingNotifier as Named, backoffDelay, eventsUrl, normalizeRegion, TRANSPORTS,
  type ConnectionState, type ResyncMessage, type TrendingNotification,
} from '../../../crates/notify-gateway/assets/client.js';

const seen: string[] = [];
const notifier = new TrendingNotifier({
  region: 'ae',
  transport: 'auto',
  sseAfterFailures: 2,
  backoffMs: 500,
  onNotification: (notification: TrendingNotification) => {
    seen.push(notification.title);
    const id: string | undefined = notification.id;
    if (notification.rtl && id) seen.push(id);
  },
  onResync: (message: ResyncMessage) => seen.push(message.latest ?? message.since),
  onState: (state: ConnectionState, detail) => {
    if (state === 'reconnecting' && detail.transport === 'sse') seen.push(String(detail.delayMs));
  },
});
const same: Named = notifier;
const last: string | null = same.lastId;
const transport: 'websocket' | 'sse' = notifier.transport;
notifier.setRegion(normalizeRegion('fi'));
const delay: number = backoffDelay(3);
const url: URL = eventsUrl('wss://ws.example.com/');
seen.push(String(last), transport, String(delay), url.href, TRANSPORTS.join());

// @ts-expect-error: not a transport
new TrendingNotifier({ transport: 'long-polling' });
// @ts-expect-error: backoff is a number of milliseconds
new TrendingNotifier({ backoffMs: '500' });
// @ts-expect-error: a notification's title is a string
const title: number = ({} as TrendingNotification).title;
// @ts-expect-error: state is read-only
notifier.state = 'open';
// @ts-expect-error: unknown state
const state: ConnectionState = 'paused';
notifier.close();

// Several regions on one connection, each resuming after its own id.
const both = new TrendingNotifier({ region: ['AE', 'fi'], since: { AE: '1764290000123-0' } });
const regions: readonly string[] = both.regions;
const finnish: string | undefined = both.lastIds.FI;
both.setRegion('AE,FI,CZ');
seen.push(regions.join(), String(finnish), new TrendingNotifier({ region: 'AE,FI', since: 'AE:1-0,FI:2-0' }).url);
// @ts-expect-error: a region list is of strings
new TrendingNotifier({ region: [1, 2] });
// @ts-expect-error: lastIds is read-only
both.lastIds = {};
both.close();
