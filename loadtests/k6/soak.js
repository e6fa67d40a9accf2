// An hour at a moderate rate of both: memory, latency and error rate must
// stay flat (watch /metrics and RSS while it runs).
//
//   k6 run --summary-export soak.json loadtests/k6/soak.js
//
// INGEST_RATE (default 5/s), REPORT_RATE (default 2/s), DURATION (default
// 1h), BATCH (default 500).
import { arrival, ms, num, requireTokens } from './lib.js';
import { ingest } from './ingest.js';
import { reports } from './reports.js';

export { ingest, reports };

const duration = __ENV.DURATION || '1h';

export const options = {
  scenarios: {
    ingest: arrival('ingest', num('INGEST_RATE', 5), duration, 10),
    reports: arrival('reports', num('REPORT_RATE', 2), duration, 5),
  },
  thresholds: {
    'http_req_failed': ['rate<0.001'],
    'http_req_duration{scenario:ingest}': [`p(95)<${ms(1000)}`, `p(99)<${ms(2000)}`],
    'http_req_duration{scenario:reports}': [`p(95)<${ms(500)}`, `p(99)<${ms(1000)}`],
    checks: ['rate>0.999'],
  },
};

export function setup() {
  requireTokens();
}
