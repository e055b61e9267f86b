#![allow(dead_code)]

use serde::{Deserialize, Serialize};

use eda_core::Event;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderCreated {
    pub order_id: u64,
    pub customer: String,
}

impl Event for OrderCreated {
    const TYPE: &'static str = "order.created";
    fn partition_key(&self) -> Option<String> {
        Some(self.customer.clone())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderShipped {
    pub order_id: u64,
}

impl Event for OrderShipped {
    const TYPE: &'static str = "order.shipped";
}

pub fn order(order_id: u64) -> OrderCreated {
    OrderCreated {
        order_id,
        customer: format!("c{}", order_id % 7),
    }
}
