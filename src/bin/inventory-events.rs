//! A small Kafka client for trying the event flow by hand (Debian's kcat is built on a
//! librdkafka too old to talk to some brokers, tansu among them).
//!
//!   inventory-events send --topic ORDER_TOPIC --key ORD-1 --tag ORDER_CREATED < message.json
//!   inventory-events tail --topic INVENTORY_TOPIC [--count N] [--timeout-secs S]
//!
//! Both take `--brokers host:port` (default: $KAFKA_BROKERS or 127.0.0.1:9092).

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

struct Args {
    command: String,
    brokers: String,
    topic: String,
    key: String,
    tag: Option<String>,
    count: usize,
    timeout: Duration,
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let command = it
        .next()
        .ok_or("usage: inventory-events send|tail --topic T ...")?;
    let mut args = Args {
        command,
        brokers: std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into()),
        topic: String::new(),
        key: String::new(),
        tag: None,
        count: usize::MAX,
        timeout: Duration::from_secs(10),
    };
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--brokers" => args.brokers = value,
            "--topic" => args.topic = value,
            "--key" => args.key = value,
            "--tag" => args.tag = Some(value),
            "--count" => args.count = value.parse().map_err(|_| "--count takes a number")?,
            "--timeout-secs" => {
                args.timeout =
                    Duration::from_secs(value.parse().map_err(|_| "--timeout-secs takes a number")?)
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.topic.is_empty() {
        return Err("--topic is required".into());
    }
    Ok(args)
}

async fn send(args: &Args) -> Result<(), String> {
    let mut body = String::new();
    std::io::stdin()
        .read_to_string(&mut body)
        .map_err(|e| e.to_string())?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("message.timeout.ms", "10000")
        .create()
        .map_err(|e| e.to_string())?;
    let mut headers = OwnedHeaders::new();
    if let Some(tag) = &args.tag {
        headers = headers.insert(Header {
            key: "tag",
            value: Some(tag.as_str()),
        });
    }
    let delivery = producer
        .send(
            FutureRecord::to(&args.topic)
                .key(&args.key)
                .payload(body.trim())
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e.to_string())?;
    println!(
        "sent to {} partition {} offset {}",
        args.topic, delivery.partition, delivery.offset
    );
    Ok(())
}

async fn tail(args: &Args) -> Result<(), String> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set(
            "group.id",
            format!("inventory-events-{}", uuid::Uuid::new_v4()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| e.to_string())?;
    consumer
        .subscribe(&[&args.topic])
        .map_err(|e| e.to_string())?;
    let mut seen = 0;
    while seen < args.count {
        match tokio::time::timeout(args.timeout, consumer.recv()).await {
            Ok(Ok(m)) => {
                let headers: Vec<String> = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                format!(
                                    "{}={}",
                                    h.key,
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                println!(
                    "{} key={} {}",
                    headers.join(" "),
                    String::from_utf8_lossy(m.key().unwrap_or_default()),
                    String::from_utf8_lossy(m.payload().unwrap_or_default())
                );
                seen += 1;
            }
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => break, // quiet for --timeout-secs: done
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let result = match args.command.as_str() {
        "send" => send(&args).await,
        "tail" => tail(&args).await,
        other => Err(format!("unknown command {other}: send or tail")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
