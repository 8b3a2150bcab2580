//! Rules that types alone cannot express, checked once at start.

use std::time::Duration;

use crate::{
    error::{ConfigError, Problem},
    model::{Assignment, BrokerKind, Config, MAX_ABS_VALUE},
    traqq::{TraqqKind, MAX_TOP_K},
};

/// Checks every rule and reports all broken ones together.
pub(crate) fn validate(config: &Config) -> Result<(), ConfigError> {
    let mut problems = Vec::new();
    let mut need = |ok: bool, key: &str, expected: &str| {
        if !ok {
            problems.push(Problem { key: key.to_owned(), expected: expected.to_owned() });
        }
    };

    need((1..=4096).contains(&config.broker.partitions), "broker.partitions", "between 1 and 4096");

    let nats = &config.nats;
    need(!nats.url.trim().is_empty(), "nats.url", "a NATS server URL such as nats://127.0.0.1:4222");
    need(is_stream_name(&nats.stream), "nats.stream", "letters, digits, '-' and '_' only, not empty");
    need(
        is_subject_token_path(&nats.subject_prefix),
        "nats.subject_prefix",
        "dot-separated tokens without spaces, '*' or '>', not empty",
    );
    need(is_bucket_name(&nats.salt_bucket), "nats.salt_bucket", "letters, digits, '-' and '_' only, not empty");
    need(is_bucket_name(&nats.lease_bucket), "nats.lease_bucket", "letters, digits, '-' and '_' only, not empty");
    need(nats.lease_bucket != nats.salt_bucket, "nats.lease_bucket", "a bucket other than nats.salt_bucket");
    need(nats.replicas >= 1 && nats.replicas <= 5, "nats.replicas", "between 1 and 5");
    need(
        nats.duplicate_window.as_millis() >= 100,
        "nats.duplicate_window",
        "at least 100ms (retried publishes are deduplicated inside it)",
    );
    need(
        nats.max_age.is_zero() || nats.max_age >= nats.duplicate_window,
        "nats.max_age",
        "0 (unlimited) or at least nats.duplicate_window",
    );
    need(nats.user.is_some() == nats.password.is_some(), "nats.password", "set together with nats.user");
    need(
        [nats.token.is_some(), nats.user.is_some(), nats.nkey.is_some(), nats.credentials_file.is_some()]
            .iter()
            .filter(|set| **set)
            .count()
            <= 1,
        "nats.token",
        "one way to authenticate: nats.token, nats.user/password, nats.nkey or nats.credentials_file",
    );
    need(
        nats.tls_cert_file.is_some() == nats.tls_key_file.is_some(),
        "nats.tls_key_file",
        "set together with nats.tls_cert_file (mutual TLS)",
    );
    need(
        nats.nkey.as_ref().is_none_or(|k| k.expose().starts_with("SU")),
        "nats.nkey",
        "a user NKey seed (starts with SU)",
    );

    let kafka = &config.kafka;
    need(
        !kafka.bootstrap_servers.trim().is_empty()
            && kafka.bootstrap_servers.split(',').all(|server| {
                server
                    .trim()
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
            }),
        "kafka.bootstrap_servers",
        "comma-separated host:port pairs such as 127.0.0.1:9092",
    );
    need(is_topic_name(&kafka.topic), "kafka.topic", "1 to 249 letters, digits, '.', '_' or '-'");
    need(is_topic_name(&kafka.salt_topic), "kafka.salt_topic", "1 to 249 letters, digits, '.', '_' or '-'");
    need(kafka.salt_topic != kafka.topic, "kafka.salt_topic", "a topic other than kafka.topic");
    need(!kafka.consumer_group.trim().is_empty(), "kafka.consumer_group", "a consumer group name");
    if let Some(partitions) = kafka.partitions {
        need(
            partitions >= config.broker.partitions,
            "kafka.partitions",
            "at least broker.partitions (Gallop publishes to partitions 0..broker.partitions)",
        );
    }
    need((1..=16).contains(&kafka.replication_factor), "kafka.replication_factor", "between 1 and 16");

    let input = &config.input;
    let topic = "1 to 249 letters, digits, '.', '_' or '-'";
    need(is_stream_name(&input.nats_stream), "input.nats_stream", "letters, digits, '-' and '_' only, not empty");
    need(input.nats_stream != nats.stream, "input.nats_stream", "a stream other than nats.stream");
    need(is_subject(&input.nats_subject), "input.nats_subject", "a NATS subject such as gallop.in.> (no spaces)");
    need(is_stream_name(&input.nats_dead_stream), "input.nats_dead_stream", "letters, digits, '-' and '_' only");
    need(
        input.nats_dead_stream != input.nats_stream && input.nats_dead_stream != nats.stream,
        "input.nats_dead_stream",
        "a stream other than input.nats_stream and nats.stream",
    );
    need(
        is_subject_token_path(&input.nats_dead_subject),
        "input.nats_dead_subject",
        "dot-separated tokens without spaces, '*' or '>'",
    );
    need(is_stream_name(&input.nats_consumer), "input.nats_consumer", "letters, digits, '-' and '_' only");
    need(
        input.nats_ack_wait.as_secs() >= 1 && input.nats_ack_wait * 2 <= nats.duplicate_window,
        "input.nats_ack_wait",
        "at least 1s and at most half of nats.duplicate_window (a message processed again after a crash must \
         still be recognised as a copy)",
    );
    need(is_topic_name(&input.kafka_topic), "input.kafka_topic", topic);
    need(is_topic_name(&input.kafka_dead_topic), "input.kafka_dead_topic", topic);
    for (key, name) in [("input.kafka_topic", &input.kafka_topic), ("input.kafka_dead_topic", &input.kafka_dead_topic)]
    {
        need(
            name != &kafka.topic && name != &kafka.salt_topic,
            key,
            "a topic other than kafka.topic and kafka.salt_topic",
        );
    }
    need(input.kafka_dead_topic != input.kafka_topic, "input.kafka_dead_topic", "a topic other than input.kafka_topic");
    need(!input.kafka_group.trim().is_empty(), "input.kafka_group", "a consumer group name");
    need(input.dead_retention.as_secs() >= 3600, "input.dead_retention", "at least 1h");
    need((1..=4096).contains(&input.max_in_flight), "input.max_in_flight", "between 1 and 4096");
    need(input.max_records_per_message >= 1, "input.max_records_per_message", "at least 1");
    need(kafka.retention.as_secs() >= 3600, "kafka.retention", "at least 1h");
    need(
        kafka.dedup_window.as_secs() >= 1 && kafka.dedup_window <= kafka.retention,
        "kafka.dedup_window",
        "at least 1s and at most kafka.retention",
    );
    for key in kafka.properties.0.keys() {
        need(
            !["enable.idempotence", "acks", "message.timeout.ms", "enable.auto.commit", "auto.offset.reset"]
                .contains(&key.as_str()),
            &format!("kafka.properties.\"{key}\""),
            "left to Gallop: its delivery guarantees depend on it",
        );
    }

    let ingest = &config.ingest;
    need(!ingest.publish_timeout.is_zero(), "ingest.publish_timeout", "greater than 0");
    need(
        config.broker.kind != BrokerKind::Kafka || ingest.publish_timeout.as_millis() >= 2500,
        "ingest.publish_timeout",
        "at least 2.5s with broker.kind = \"kafka\" (librdkafka settles a message up to 1.5s after its timeout)",
    );
    need(ingest.retry_after_seconds >= 1, "ingest.retry_after_seconds", "at least 1");
    need(ingest.user_agent_cache >= 1, "ingest.user_agent_cache", "at least 1");
    need(ingest.user_agent_cache_bytes >= 64 * 1024, "ingest.user_agent_cache_bytes", "at least 65536");
    need(ingest.ack_timeout >= ingest.publish_timeout, "ingest.ack_timeout", "at least ingest.publish_timeout");
    need(ingest.stall_after.as_millis() >= 100, "ingest.stall_after", "at least 100ms");
    let server = &ingest.server;
    need(server.max_connections >= 16, "ingest.server.max_connections", "at least 16");
    for (key, value) in
        [("ingest.server.header_timeout", server.header_timeout), ("ingest.server.body_timeout", server.body_timeout)]
    {
        need(value.as_millis() >= 100, key, "at least 100ms");
    }
    need(server.max_header_bytes >= 8192, "ingest.server.max_header_bytes", "at least 8192");
    need(
        server.max_inflight_bytes >= ingest.limits.max_body_bytes,
        "ingest.server.max_inflight_bytes",
        "at least ingest.limits.max_body_bytes",
    );
    for (section, keys) in [("event_keys", &ingest.auth.event_keys), ("metrics_keys", &ingest.auth.metrics_keys)] {
        for (i, key) in keys.iter().enumerate() {
            need(
                key.strip_prefix("sha256:")
                    .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())),
                &format!("ingest.auth.{section}[{i}]"),
                "a key's hash, sha256:<64 hex digits> (print one with `gallop hash-key`)",
            );
        }
    }
    need(
        ingest.limits.max_abs_value.is_finite()
            && ingest.limits.max_abs_value > 0.0
            && ingest.limits.max_abs_value <= MAX_ABS_VALUE,
        "ingest.limits.max_abs_value",
        &format!("greater than 0 and at most {MAX_ABS_VALUE:e}"),
    );
    need(ingest.limits.max_user_agent_bytes >= 64, "ingest.limits.max_user_agent_bytes", "at least 64");
    if let Some(header) = &ingest.country_header {
        need(
            !header.is_empty() && header.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "ingest.country_header",
            "an HTTP header name such as CF-IPCountry",
        );
    }
    for (i, site) in ingest.sites.iter().enumerate() {
        need(
            !site.is_empty() && site.len() <= ingest.limits.max_site_bytes,
            &format!("ingest.sites[{i}]"),
            "a non-empty site no longer than ingest.limits.max_site_bytes",
        );
    }
    for (i, origin) in ingest.cors_allowed_origins.iter().enumerate() {
        need(
            origin == "*" || origin.starts_with("http://") || origin.starts_with("https://"),
            &format!("ingest.cors_allowed_origins[{i}]"),
            "\"*\" or an origin such as https://example.com",
        );
    }

    let limits = &ingest.limits;
    for (key, value) in [
        ("ingest.limits.max_body_bytes", limits.max_body_bytes),
        ("ingest.limits.max_batch_events", limits.max_batch_events),
        ("ingest.limits.max_site_bytes", limits.max_site_bytes),
        ("ingest.limits.max_name_bytes", limits.max_name_bytes),
        ("ingest.limits.max_url_bytes", limits.max_url_bytes),
        ("ingest.limits.max_referrer_bytes", limits.max_referrer_bytes),
        ("ingest.limits.max_id_bytes", limits.max_id_bytes),
        ("ingest.limits.max_prop_key_bytes", limits.max_prop_key_bytes),
        ("ingest.limits.max_prop_value_bytes", limits.max_prop_value_bytes),
        ("ingest.limits.max_domains", limits.max_domains),
    ] {
        need(value >= 1, key, "at least 1");
    }

    let batching = &ingest.batching;
    need((1..=100_000).contains(&batching.max_events), "ingest.batching.max_events", "between 1 and 100000");
    need((1024..=8 << 20).contains(&batching.max_bytes), "ingest.batching.max_bytes", "between 1024 and 8388608");
    need(batching.linger.as_millis() <= 1000, "ingest.batching.linger", "at most 1s (requests wait for it)");
    need(batching.max_in_flight >= 1, "ingest.batching.max_in_flight", "at least 1");

    need(config.time.allowed_lateness.as_secs() >= 60, "time.allowed_lateness", "at least 1m (one base bucket)");
    need(
        config.time.acceptance_grace >= config.ingest.publish_timeout + config.ingest.ack_timeout,
        "time.acceptance_grace",
        "at least ingest.publish_timeout + ingest.ack_timeout (an event the gateway accepted must count)",
    );

    let processor = &config.processor;
    need(!processor.flush_interval.is_zero(), "processor.flush_interval", "greater than 0");
    need(processor.flush_keys >= 1, "processor.flush_keys", "at least 1");
    need(processor.max_live_keys >= processor.flush_keys, "processor.max_live_keys", "at least processor.flush_keys");
    need(processor.max_value_bytes >= 8, "processor.max_value_bytes", "at least 8");
    need(processor.max_combinations_per_event >= 1, "processor.max_combinations_per_event", "at least 1");
    need(!processor.session_timeout.is_zero(), "processor.session_timeout", "greater than 0");
    need(processor.max_open_sessions >= 8, "processor.max_open_sessions", "at least 8");
    for (i, field) in processor.session_breakdowns.iter().enumerate() {
        need(
            ["source", "country", "device", "browser", "os"].contains(&field.as_str()),
            &format!("processor.session_breakdowns[{i}]"),
            "one of source, country, device, browser, os",
        );
    }
    for (i, rollup) in processor.rollups.iter().enumerate() {
        need(!rollup.dimension.trim().is_empty(), &format!("processor.rollups[{i}].dimension"), "a field such as path");
    }
    for (i, board) in processor.leaderboards.iter().enumerate() {
        need(
            !board.dimension.trim().is_empty(),
            &format!("processor.leaderboards[{i}].dimension"),
            "a field such as referrer",
        );
        need(
            (1..=100).contains(&board.k),
            &format!("processor.leaderboards[{i}].k"),
            "between 1 and 100 (ClickHouse stores leaderboards as topK(100) states)",
        );
    }

    let consumer = &config.consumer;
    need(
        consumer.assignment == Assignment::Static || consumer.partitions.is_empty(),
        "consumer.partitions",
        "empty with consumer.assignment = \"auto\" (the processors share the partitions themselves); \
         set consumer.assignment = \"static\" to pin partitions by hand",
    );
    need(
        consumer.member.is_empty() || is_stream_name(&consumer.member),
        "consumer.member",
        "letters, digits, '-' and '_' only (or empty: <host>-<pid>)",
    );
    need(
        consumer.lease_ttl >= Duration::from_secs(2) && consumer.lease_ttl <= Duration::from_secs(300),
        "consumer.lease_ttl",
        "between 2s and 5m",
    );
    for (i, &partition) in consumer.partitions.iter().enumerate() {
        need(
            partition < config.broker.partitions,
            &format!("consumer.partitions[{i}]"),
            "a partition below broker.partitions",
        );
        need(!consumer.partitions[..i].contains(&partition), &format!("consumer.partitions[{i}]"), "listed once");
    }
    need(
        is_stream_name(&consumer.durable_prefix),
        "consumer.durable_prefix",
        "letters, digits, '-' and '_' only, not empty",
    );
    need((1..=10_000).contains(&consumer.fetch_batch), "consumer.fetch_batch", "between 1 and 10000");
    need(
        consumer.fetch_max_bytes >= (1 << 20).max(config.ingest.batching.max_bytes.saturating_mul(2)),
        "consumer.fetch_max_bytes",
        "at least 1 MiB and at least twice ingest.batching.max_bytes (a pull must hold the largest message)",
    );
    need(consumer.ack_wait.as_secs() >= 1, "consumer.ack_wait", "at least 1s");
    need(consumer.max_ack_pending >= 1, "consumer.max_ack_pending", "at least 1");
    need(consumer.dedup_max_ids >= 1_000, "consumer.dedup_max_ids", "at least 1000");

    let clickhouse = &config.clickhouse;
    need(
        clickhouse.password.is_none() || clickhouse.password_file.is_none(),
        "clickhouse.password_file",
        "not together with clickhouse.password",
    );
    need(
        clickhouse.url.starts_with("http://") || clickhouse.url.starts_with("https://"),
        "clickhouse.url",
        "an HTTP URL such as http://127.0.0.1:8123",
    );
    need(is_stream_name(&clickhouse.database), "clickhouse.database", "letters, digits, '-' and '_' only, not empty");
    need(!clickhouse.request_timeout.is_zero(), "clickhouse.request_timeout", "greater than 0");
    need(!clickhouse.retry_initial_backoff.is_zero(), "clickhouse.retry_initial_backoff", "greater than 0");
    need(
        clickhouse.retry_max_backoff >= clickhouse.retry_initial_backoff,
        "clickhouse.retry_max_backoff",
        "at least clickhouse.retry_initial_backoff",
    );
    match &clickhouse.cluster {
        None => need(clickhouse.shards.is_empty(), "clickhouse.shards", "only together with clickhouse.cluster"),
        Some(cluster) => {
            need(
                !cluster.is_empty() && cluster.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
                "clickhouse.cluster",
                "a cluster name of the servers' remote_servers: letters, digits, '-' and '_' only, not empty",
            );
            need(
                !clickhouse.shards.is_empty() && clickhouse.shards.iter().all(|replicas| !replicas.is_empty()),
                "clickhouse.shards",
                "with clickhouse.cluster, the replicas' HTTP URLs of every shard: a non-empty list of non-empty lists",
            );
            let urls: Vec<&String> = clickhouse.shards.iter().flatten().collect();
            need(
                urls.iter().all(|url| url.starts_with("http://") || url.starts_with("https://")),
                "clickhouse.shards",
                "HTTP URLs such as http://127.0.0.1:8123",
            );
            need(
                urls.iter().enumerate().all(|(i, url)| !urls[..i].contains(url)),
                "clickhouse.shards",
                "every replica once: a URL is listed twice",
            );
        }
    }

    let traqq = &config.traqq;
    if traqq.enabled {
        need(
            !traqq.site.trim().is_empty() && traqq.site.len() <= config.ingest.limits.max_site_bytes,
            "traqq.site",
            "the site traqq events are recorded under, not empty, within ingest.limits.max_site_bytes",
        );
        need(
            config.ingest.sites.is_empty() || config.ingest.sites.contains(&traqq.site),
            "traqq.site",
            "one of ingest.sites (the allow-list applies to traqq events too)",
        );
        need(traqq.max_line_bytes >= 1024, "traqq.max_line_bytes", "at least 1024");
        need(traqq.max_connections >= 1, "traqq.max_connections", "at least 1");
        need(traqq.max_pipelined >= 1, "traqq.max_pipelined", "at least 1");
        need(!traqq.idle_timeout.is_zero(), "traqq.idle_timeout", "greater than 0");
        need((1..=3660).contains(&traqq.max_query_days), "traqq.max_query_days", "between 1 and 3660");
        need((1..=MAX_TOP_K).contains(&traqq.top_k), "traqq.top_k", "between 1 and 100");
        for (key, expected) in traqq.mapping.problems() {
            need(false, &key, &expected);
        }
        // The processor must keep what the listener answers from: listed explicitly, as
        // `gallop traqq-config` prints them.
        for metric in traqq.mapping.metrics() {
            let (list, present) = match metric.kind {
                TraqqKind::Top => (
                    "processor.leaderboards",
                    processor
                        .leaderboards
                        .iter()
                        .any(|l| same_spec(&l.dimension, &metric.dimension) && l.k >= traqq.top_k),
                ),
                _ => {
                    ("processor.rollups", processor.rollups.iter().any(|r| same_spec(&r.dimension, &metric.dimension)))
                }
            };
            need(
                present,
                &metric.origin,
                &format!(
                    "{list} to hold {:?}{} (`gallop traqq-config` prints every rule the mapping needs)",
                    metric.dimension,
                    if metric.kind == TraqqKind::Top {
                        format!(" with k >= traqq.top_k ({})", traqq.top_k)
                    } else {
                        String::new()
                    }
                ),
            );
        }
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

/// Whether two dimension specs name the same dimension (spaces around `~` aside).
fn same_spec(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.split('~').map(str::trim).collect::<Vec<_>>().join("~");
    norm(a) == norm(b)
}

fn is_stream_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Kafka's rule for topic names.
fn is_topic_name(name: &str) -> bool {
    (1..=249).contains(&name.len())
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn is_bucket_name(name: &str) -> bool {
    is_stream_name(name)
}

/// A subject to subscribe to: tokens, `*` for one token, `>` as the last token.
fn is_subject(subject: &str) -> bool {
    let tokens: Vec<&str> = subject.split('.').collect();
    tokens.iter().enumerate().all(|(i, token)| match *token {
        "" => false,
        "*" => true,
        ">" => i + 1 == tokens.len(),
        t => t.bytes().all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>'),
    })
}

fn is_subject_token_path(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix
            .split('.')
            .all(|token| !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>'))
}
