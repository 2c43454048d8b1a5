//! A feed: one publisher, named subscribers that come and go.
//!
//! Why not a subscribe message to the publishing actor: a publisher that is rebuilt after a
//! panic starts with an empty struct, and every subscription would be lost with the old
//! one. A feed lives outside both sides (the node makes it and hands clones to each), so a
//! rebuilt publisher keeps its subscribers, and a rebuilt subscriber subscribes again under
//! its name, replacing its predecessor's closed address.
//!
//! A feed made with [`Feed::replaying`] also hands a new subscriber the newest message at
//! once: for a state that changes rarely (RaftCore's [`crate::raft_core::RaftFacts`]), a
//! rebuilt subscriber would otherwise know nothing until the next change.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use actix::{Message, Recipient};

/// See the module doc. Cheap to clone; clones share the subscribers.
pub struct Feed<M>
where
    M: Message<Result = ()> + Send + Clone,
{
    inner: Arc<Mutex<Inner<M>>>,
}

struct Inner<M>
where
    M: Message<Result = ()> + Send + Clone,
{
    subs: BTreeMap<&'static str, Recipient<M>>,
    /// The newest message published, kept only by a replaying feed.
    last: Option<M>,
    replay: bool,
}

impl<M> Feed<M>
where
    M: Message<Result = ()> + Send + Clone + 'static,
{
    /// A feed that delivers each message once, to whoever subscribes at the time.
    pub fn new() -> Feed<M> {
        Feed::with_replay(false)
    }

    /// A feed that also hands each new subscriber the newest message.
    pub fn replaying() -> Feed<M> {
        Feed::with_replay(true)
    }

    fn with_replay(replay: bool) -> Feed<M> {
        Feed {
            inner: Arc::new(Mutex::new(Inner {
                subs: BTreeMap::new(),
                last: None,
                replay,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<M>> {
        // A subscriber's panic cannot leave the map half-written (inserts are single calls),
        // so a poisoned lock still holds a sound map.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deliver every future message to `to`, replacing what `name` had subscribed; on a
    /// replaying feed, the newest message too.
    pub fn subscribe(&self, name: &'static str, to: Recipient<M>) {
        let mut inner = self.lock();
        if let Some(last) = &inner.last {
            let _ = to.try_send(last.clone());
        }
        inner.subs.insert(name, to);
    }

    /// Hand `msg` to every subscriber. A full or closed mailbox (a subscriber being rebuilt)
    /// misses it: publishers send states that the next message restates, never commands.
    pub fn publish(&self, msg: &M) {
        let mut inner = self.lock();
        for to in inner.subs.values() {
            let _ = to.try_send(msg.clone());
        }
        if inner.replay {
            inner.last = Some(msg.clone());
        }
    }

    /// The subscribers' names.
    pub fn names(&self) -> Vec<&'static str> {
        self.lock().subs.keys().copied().collect()
    }
}

impl<M> Default for Feed<M>
where
    M: Message<Result = ()> + Send + Clone + 'static,
{
    fn default() -> Feed<M> {
        Feed::new()
    }
}

impl<M> Clone for Feed<M>
where
    M: Message<Result = ()> + Send + Clone,
{
    fn clone(&self) -> Feed<M> {
        Feed {
            inner: self.inner.clone(),
        }
    }
}

impl<M> std::fmt::Debug for Feed<M>
where
    M: Message<Result = ()> + Send + Clone + 'static,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use actix::{Actor, Context, Handler, Message};

    use super::Feed;

    #[derive(Message, Clone, Debug, PartialEq)]
    #[rtype(result = "()")]
    struct Said(u32);

    struct Listener(Arc<Mutex<Vec<u32>>>);

    impl Actor for Listener {
        type Context = Context<Self>;
    }

    impl Handler<Said> for Listener {
        type Result = ();
        fn handle(&mut self, m: Said, _: &mut Context<Self>) {
            self.0.lock().expect("lock").push(m.0);
        }
    }

    /// The messages delivered once at least `n` have been (the listener runs on this test's
    /// single-threaded system, so yielding lets it handle what was queued); bounded.
    async fn heard(heard: &Arc<Mutex<Vec<u32>>>, n: usize) -> Vec<u32> {
        for _ in 0..1_000 {
            if heard.lock().expect("lock").len() >= n {
                break;
            }
            tokio::task::yield_now().await;
        }
        heard.lock().expect("lock").clone()
    }

    #[actix::test]
    async fn a_replaying_feed_hands_the_newest_to_a_new_subscriber_and_a_name_replaces_its_predecessor()
     {
        let feed: Feed<Said> = Feed::replaying();
        feed.publish(&Said(1));
        feed.publish(&Said(2));
        let first = Arc::new(Mutex::new(Vec::new()));
        feed.subscribe("a", Listener(first.clone()).start().recipient());
        assert_eq!(
            heard(&first, 1).await,
            vec![2],
            "only the newest is replayed"
        );

        // A rebuilt subscriber under the same name: the old one hears nothing more.
        let second = Arc::new(Mutex::new(Vec::new()));
        feed.subscribe("a", Listener(second.clone()).start().recipient());
        feed.publish(&Said(3));
        assert_eq!(heard(&second, 2).await, vec![2, 3]);
        // By now the publish of 3 has been handled: the replaced subscriber did not get it.
        assert_eq!(heard(&first, 1).await, vec![2]);
        assert_eq!(feed.names(), vec!["a"]);
    }

    #[actix::test]
    async fn a_plain_feed_replays_nothing() {
        let feed: Feed<Said> = Feed::new();
        feed.publish(&Said(1));
        let got = Arc::new(Mutex::new(Vec::new()));
        feed.subscribe("a", Listener(got.clone()).start().recipient());
        feed.publish(&Said(2));
        // 2 arrives after anything replayed would have: only 2.
        assert_eq!(heard(&got, 1).await, vec![2]);
    }
}
