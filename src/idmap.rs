//! TEMP STUB (replaced by the copy branch)
use uuid::Uuid;
/// stub
#[derive(Clone, Default)]
pub struct IdMap(std::sync::Arc<dashmap::DashMap<i64, Uuid>>);
impl IdMap {
    /// stub
    pub fn get(&self, k: i64) -> Option<Uuid> {
        self.0.get(&k).map(|v| *v)
    }
    /// stub
    pub fn upsert(&self, k: i64, u: Uuid) {
        self.0.insert(k, u);
    }
}
