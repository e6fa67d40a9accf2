//! Amounts in each tenant's base currency (`docs/fx.md`): the rates the
//! state store holds (every tenant's, and a tenant's own over them), read
//! again when they change, and the conversion each enriched record gets.

use crate::{Error, Result};
use spendstream_schemas::fx::{FxError, Rates};
use spendstream_schemas::{BaseAmount, Currency, EnrichedRecordOf};
use spendstream_state::{FX_SCOPE_ALL, FxStore};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::Mutex;

/// Each tenant's base currency: one for all, some tenants their own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseCurrencies {
    pub default: Currency,
    pub tenants: BTreeMap<String, Currency>,
}

impl Default for BaseCurrencies {
    fn default() -> Self {
        Self {
            default: Currency::from_code("USD").unwrap_or_else(|| unreachable!("USD is listed")),
            tenants: BTreeMap::new(),
        }
    }
}

impl BaseCurrencies {
    pub fn of(&self, tenant: &str) -> Currency {
        self.tenants.get(tenant).copied().unwrap_or(self.default)
    }
}

/// Rates as the store holds them, cached per tenant until they change.
pub struct FxSource {
    store: Arc<dyn FxStore>,
    bases: BaseCurrencies,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    version: Option<u64>,
    all: Option<Arc<Rates>>,
    tenants: HashMap<String, Arc<Rates>>,
}

/// The rates of the tenants of one batch, fixed for the whole batch.
#[derive(Default)]
pub struct FxBatch {
    bases: BaseCurrencies,
    rates: HashMap<String, Arc<Rates>>,
}

fn parse(scope: &str, text: &str) -> Result<Rates> {
    Rates::parse_ecb_csv(text).map_err(|e| Error::FxRates {
        scope: scope.to_string(),
        reason: e.to_string(),
    })
}

impl FxSource {
    pub fn new(store: Arc<dyn FxStore>, bases: BaseCurrencies) -> Self {
        Self {
            store,
            bases,
            cache: Mutex::default(),
        }
    }

    /// The rates of `tenants`, read from the store when they changed since
    /// the last batch (one version read per batch): rates loaded before a
    /// record's batch started apply to it.
    pub async fn for_batch(&self, tenants: &[String]) -> Result<FxBatch> {
        let mut cache = self.cache.lock().await;
        let version = self.store.fx_version().await?;
        if cache.version != Some(version) {
            *cache = Cache {
                version: Some(version),
                ..Cache::default()
            };
        }
        if cache.all.is_none() {
            let all = match self.store.fx_rates(FX_SCOPE_ALL).await? {
                Some(text) => parse(FX_SCOPE_ALL, &text)?,
                None => Rates::default(),
            };
            cache.all = Some(Arc::new(all));
        }
        let mut rates = HashMap::new();
        for tenant in tenants {
            let tenant = tenant.as_str();
            if rates.contains_key(tenant) {
                continue;
            }
            let merged = match cache.tenants.get(tenant) {
                Some(r) => r.clone(),
                None => {
                    let all = cache.all.clone().unwrap_or_default();
                    let merged = match self.store.fx_rates(tenant).await? {
                        Some(text) => {
                            let mut merged = (*all).clone();
                            merged.merge(parse(tenant, &text)?);
                            Arc::new(merged)
                        }
                        None => all,
                    };
                    cache.tenants.insert(tenant.to_string(), merged.clone());
                    merged
                }
            };
            rates.insert(tenant.to_string(), merged);
        }
        Ok(FxBatch {
            bases: self.bases.clone(),
            rates,
        })
    }
}

impl FxBatch {
    /// `record`'s amount in its tenant's base currency at the rate of its
    /// transaction date; `None` (and why) when there is none.
    pub fn convert<S: AsRef<str>>(
        &self,
        record: &EnrichedRecordOf<S>,
    ) -> std::result::Result<BaseAmount, FxError> {
        let base = self.bases.of(record.tenant_id.as_ref());
        let amount = record.record.amount;
        let date = record.record.transaction_date;
        // Already in the base currency: no rate needed.
        if amount.currency == base {
            return Ok(BaseAmount {
                minor: amount.minor,
                currency: base.code().to_string(),
                rate: "1".into(),
                rate_date: date,
            });
        }
        let rates = self.rates.get(record.tenant_id.as_ref());
        let conversion = match rates {
            Some(rates) => rates.convert(amount.minor, amount.currency, base, date)?,
            None => Rates::default().convert(amount.minor, amount.currency, base, date)?,
        };
        Ok(BaseAmount {
            minor: conversion.base_minor,
            currency: base.code().to_string(),
            rate: conversion.rate,
            rate_date: conversion.rate_date,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spendstream_schemas::{EnrichedRecord, ExpenseRecord};

    fn record(tenant: &str, minor: i64, currency: &str, date: &str) -> EnrichedRecord {
        let raw = format!(
            r#"{{"source":"s","external_id":"e","account_id":"a","transaction_date":"{date}","amount_minor":{minor},"currency":"{currency}"}}"#
        );
        let now = chrono::Utc::now();
        EnrichedRecord {
            expense_id: spendstream_schemas::expense_id(tenant, "s", "e"),
            tenant_id: tenant.into(),
            version: 0,
            record: ExpenseRecord::from_json(&raw).unwrap(),
            category: spendstream_schemas::Category::Other,
            merchant_normalized: None,
            batch_id: "b".into(),
            ingested_at: now,
            processed_at: now,
            log_partition: 0,
            log_offset: 0,
            base: None,
        }
    }

    /// Every tenant's rates, a tenant's own over them, per-tenant base
    /// currencies, and rates loaded between batches used by the next.
    #[tokio::test]
    async fn tenants_read_their_own_rates_over_everyones_and_new_ones_at_the_next_batch() {
        let dir = tempfile::tempdir().unwrap();
        let state =
            spendstream_state::StateTarget::parse(&format!("embedded://{}", dir.path().display()))
                .unwrap()
                .open()
                .await
                .unwrap();
        let store = state.fx.clone();
        store
            .put_fx_rates(FX_SCOPE_ALL, "Date,USD,GBP\n2026-03-02,1.0812,0.8561\n")
            .await
            .unwrap();
        store
            .put_fx_rates("own", "Date,USD\n2026-03-02,1.10\n")
            .await
            .unwrap();
        let gbp = Currency::from_code("GBP").unwrap();
        let bases = BaseCurrencies {
            tenants: [("brit".to_string(), gbp)].into(),
            ..BaseCurrencies::default()
        };
        let fx = FxSource::new(store.clone(), bases);
        let tenants = ["any", "own", "brit"].map(String::from);
        let batch = fx.for_batch(&tenants).await.unwrap();
        let base = |t: &str, minor, currency: &str| {
            batch
                .convert(&record(t, minor, currency, "2026-03-02"))
                .map(|b| (b.minor, b.currency))
        };
        // 100.00 EUR: at everyone's 1.0812, at the tenant's own 1.10, and
        // in pounds at 0.8561.
        assert_eq!(base("any", 10_000, "EUR"), Ok((10_812, "USD".into())));
        assert_eq!(base("own", 10_000, "EUR"), Ok((11_000, "USD".into())));
        assert_eq!(base("brit", 10_000, "EUR"), Ok((8_561, "GBP".into())));
        // The own tenant still has everyone's GBP rate: £85.61 → $110.00.
        assert_eq!(base("own", 8_561, "GBP"), Ok((11_000, "USD".into())));
        // No JPY rate anywhere; USD needs none.
        assert!(matches!(
            base("any", 1_000, "JPY"),
            Err(FxError::MissingRate {
                currency: "JPY",
                ..
            })
        ));
        assert_eq!(base("any", 1_234, "USD"), Ok((1_234, "USD".into())));

        // Loaded between batches: the next batch has it.
        store
            .put_fx_rates(FX_SCOPE_ALL, "Date,USD,JPY\n2026-03-02,1.0812,160.25\n")
            .await
            .unwrap();
        let next = fx.for_batch(&tenants).await.unwrap();
        assert_eq!(
            next.convert(&record("any", 1_000, "JPY", "2026-03-02"))
                .unwrap()
                .minor,
            675
        );
        // A stored text that does not read stops the processor, naming it.
        store.put_fx_rates("own", "Dates\n").await.unwrap();
        let err = fx.for_batch(&tenants).await.err().unwrap();
        assert!(
            matches!(&err, Error::FxRates { scope, .. } if scope == "own"),
            "{err}"
        );
        assert!(!err.is_transient());
    }
}
