//! One topic per event category, created through the admin API when missing (tansu, like many
//! managed clusters, does not create topics on first use).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use tally_domain::event::EventType;

use crate::{BusError, KafkaConfig};

/// How long topic creation may take before start fails.
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);

/// Every event category, each of which has a topic.
pub fn categories() -> Vec<&'static str> {
    let mut categories: Vec<&'static str> = EventType::ALL.iter().map(|t| t.category()).collect();
    categories.sort_unstable();
    categories.dedup();
    categories
}

/// The topic of a category.
pub fn topic(config: &KafkaConfig, category: &str) -> String {
    format!("{}.{category}", config.namespace)
}

/// Every topic of this deployment.
pub fn all(config: &KafkaConfig) -> Vec<String> {
    categories()
        .into_iter()
        .map(|category| topic(config, category))
        .collect()
}

/// Creates the topics that do not exist yet, with `config.partitions` partitions.
pub async fn ensure(config: &KafkaConfig) -> Result<(), BusError> {
    let admin: AdminClient<DefaultClientContext> = config.client().create()?;
    let names = all(config);
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| {
            NewTopic::new(
                name,
                config.partitions,
                TopicReplication::Fixed(config.replication),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(CREATE_TIMEOUT));
    for result in admin.create_topics(&topics, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(BusError::CreateTopic {
                    topic,
                    reason: code.to_string(),
                });
            }
        }
    }
    Ok(())
}
