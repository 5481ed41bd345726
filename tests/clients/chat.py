#!/usr/bin/env python3
"""A real XMPP client (slixmpp) for the c2s tests: logs in as one user and
does one scripted thing, then prints one JSON line with what happened.

  chat.py login JID PASSWORD HOST PORT [direct-tls]
      log in (STARTTLS, SASL, bind) and out; {"ok": true, "jid": full JID,
      "mech": the SASL mechanism used} or {"ok": false, "error": condition};
      with direct-tls, TLS from the first byte (XEP-0368) and no STARTTLS
  chat.py recv JID PASSWORD HOST PORT COUNT SECONDS [PRIORITY] [RESOURCE]
      log in, send presence, print {"ready": true, "jid": ...} as soon as
      it is online, then wait for COUNT chat messages (or a stream error)
      and print {"messages": [...], "stream_error": condition or null}
  chat.py friend JID PASSWORD HOST PORT CONTACT SECONDS
      log in, accept every subscription request and subscribe back, and
      ask CONTACT (unless "-") for a subscription; prints {"ready": true}
      once online, then, as soon as CONTACT's presence has been seen and
      the roster says "both" (or after SECONDS), {"saw": bool,
      "roster": {jid: subscription}}
  chat.py watch JID PASSWORD HOST PORT CONTACT SECONDS
      like friend (without asking CONTACT), then prints {"online": true}
      once CONTACT is seen online and, at once when CONTACT's presence goes
      unavailable (or after SECONDS), {"offline": bool}
  chat.py muc JID PASSWORD HOST PORT ROOM NICK SECONDS SAY WAITFOR
      join ROOM as NICK, print {"joined": true}, say SAY (unless "-"),
      then wait (at most SECONDS) until a groupchat message from someone
      else arrived and the occupant WAITFOR (unless "-") left; prints
      {"messages": [...], "left": [nicks]}
  chat.py ps JID PASSWORD HOST PORT ACTION NODE SECONDS
      PubSub at pubsub.<domain>: ACTION create (the node), pub (an item
      "hello subscribers") or sub (subscribe, print {"subscribed": true},
      then wait for one notification); prints {"ok": bool, "items": [...]}
  chat.py query JID PASSWORD HOST PORT CONTACT
      log in and ask the server: disco#info of the domain and of CONTACT's
      account, the software version, a ping; prints what came back
  chat.py register JID PASSWORD HOST PORT
      in-band registration (XEP-0077) of JID with PASSWORD before logging
      in, then the login with them; {"ok": true, "jid": ...} or {"ok":
      false, "error": condition}
  chat.py passwd JID PASSWORD HOST PORT NEW
      log in and change the password to NEW in-band; {"ok": true} or the
      error condition
  chat.py unregister JID PASSWORD HOST PORT
      log in and remove the account in-band; {"ok": true, "stream_error":
      condition the server closed the stream with}
  chat.py send JID PASSWORD HOST PORT TO BODY
      log in, send one chat message, print {"ok": true}; an error reply
      within two seconds is printed as {"ok": false, "error": condition}

The server's certificate is self-signed in the tests: verification is off
(TLS itself is still negotiated and required by the server).
"""
import asyncio
import json
import ssl
import sys
import xml.etree.ElementTree as ET

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath


def out(obj):
    print(json.dumps(obj), flush=True)


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password, mode, args):
        super().__init__(jid, password)
        self.mode = mode
        self.args = args
        self.received = []
        self.failed = None
        self.done = asyncio.get_event_loop().create_future()
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.ssl_context = ctx
        self.register_plugin("xep_0199")
        self.add_event_handler("session_start", self.start)
        self.add_event_handler("failed_auth", self.on_failed_auth)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("message_error", self.on_message)
        self.add_event_handler("stream_error", self.on_stream_error)
        self.stream_error = None
        self.saw = False
        self.online_at = None
        self.offline_at = None
        self.left = []
        self.joined = False
        if mode == "ps":
            # Headline messages with a PubSub event: slixmpp raises no
            # 'message' event for them without its XEP-0060 plugin.
            self.register_handler(Callback(
                "pubsub event",
                MatchXPath("{jabber:client}message/{http://jabber.org/protocol/pubsub#event}event"),
                self.on_message,
            ))
        if mode == "muc":
            self.add_event_handler("presence", self.on_muc_presence)
        if mode in ("register", "passwd", "unregister"):
            self.register_plugin("xep_0077")
            self.plugin["xep_0077"].create_account = mode == "register"
            if mode == "register":
                self.add_event_handler("register", self.on_register)

        if mode == "watch":
            self.auto_authorize = True
            self.auto_subscribe = True
            self.add_event_handler("presence_available", self.on_watch_available)
            self.add_event_handler("presence_unavailable", self.on_watch_unavailable)
        if mode == "friend":
            self.auto_authorize = True
            self.auto_subscribe = True
            self.add_event_handler("presence_available", self.on_available)
            self.add_event_handler("roster_update", self.on_roster)

    async def on_register(self, _form):
        iq = self.Iq()
        iq["type"] = "set"
        iq["register"]["username"] = self.boundjid.user
        iq["register"]["password"] = self.password
        try:
            await iq.send(timeout=10)
        except IqError as e:
            self.failed = e.iq["error"]["condition"]
            self.done.set_result(None)
            self.disconnect()
        except IqTimeout:
            self.failed = "timeout"
            self.done.set_result(None)
            self.disconnect()

    async def account_change(self, change):
        try:
            await change(timeout=10)
        except IqError as e:
            self.failed = e.iq["error"]["condition"]
            self.done.set_result(None)
            return
        out({"ok": True})
        if self.mode == "passwd":
            self.done.set_result(None)

    def on_failed_auth(self, stanza):
        cond = "not-authorized"
        try:
            cond = stanza["condition"] or cond
        except Exception:
            pass
        self.failed = cond
        if not self.done.done():
            self.done.set_result(None)

    async def start(self, _event):
        if self.mode == "register":
            out({"ok": True, "jid": str(self.boundjid)})
            self.done.set_result(None)
        elif self.mode == "passwd":
            await self.account_change(
                lambda **kw: self.plugin["xep_0077"].change_password(self.args[0], **kw))
        elif self.mode == "unregister":
            await self.account_change(self.plugin["xep_0077"].cancel_registration)
        elif self.mode == "login":
            mech = self.plugin["feature_mechanisms"].mech
            out({"ok": True, "jid": str(self.boundjid),
                 "mech": None if mech is None else mech.name})
            self.done.set_result(None)
        elif self.mode == "recv":
            priority = int(self.args[2]) if len(self.args) > 2 else 0
            self.send_presence(ppriority=priority)
            out({"ready": True, "jid": str(self.boundjid)})
        elif self.mode == "muc":
            self.send_presence()
            p = self.make_presence(pto="%s/%s" % (self.args[0], self.args[1]))
            p.append(ET.Element("{http://jabber.org/protocol/muc}x"))
            p.send()
        elif self.mode == "ps":
            # Notifications go to the bare JID: available sessions only.
            self.send_presence()
            action, node = self.args[0], self.args[1]
            ns = "http://jabber.org/protocol/pubsub"
            iq = self.make_iq_set(ito="pubsub." + self.boundjid.domain)
            ps = ET.Element("{%s}pubsub" % ns)
            if action == "create":
                ET.SubElement(ps, "{%s}create" % ns, {"node": node})
            elif action == "sub":
                ET.SubElement(ps, "{%s}subscribe" % ns, {"node": node, "jid": self.boundjid.bare})
            else:
                pub = ET.SubElement(ps, "{%s}publish" % ns, {"node": node})
                item = ET.SubElement(pub, "{%s}item" % ns, {"id": "1"})
                entry = ET.SubElement(item, "{urn:example:news}entry")
                entry.text = "hello subscribers"
            iq.append(ps)
            try:
                await iq.send(timeout=10)
                ok = True
            except Exception as e:
                ok = str(e)
            if action == "sub" and ok is True:
                out({"subscribed": True})
            else:
                out({"ok": ok})
                self.done.set_result(None)
        elif self.mode == "watch":
            await self.get_roster()
            self.send_presence()
            out({"ready": True, "jid": str(self.boundjid)})
        elif self.mode == "friend":
            await self.get_roster()
            self.send_presence()
            out({"ready": True, "jid": str(self.boundjid)})
            if self.args[0] != "-":
                self.send_presence_subscription(pto=self.args[0])
        elif self.mode == "query":
            domain = self.boundjid.domain
            found = {}
            disco = "http://jabber.org/protocol/disco#info"
            for name, ns, to in [
                ("domain", disco, domain),
                ("account", disco, self.args[0]),
                ("version", "jabber:iq:version", domain),
            ]:
                try:
                    r = await self.make_iq_get(queryxmlns=ns, ito=to).send(timeout=10)
                    q = r.xml.find("{%s}query" % ns)
                    if ns == disco:
                        found[name] = {
                            "identity": [i.get("category") + "/" + i.get("type") for i in q.findall("{%s}identity" % ns)],
                            "features": [f.get("var") for f in q.findall("{%s}feature" % ns)],
                        }
                    else:
                        found[name] = q.findtext("{%s}name" % ns)
                except Exception as e:
                    found[name] = {"error": str(e)}
            try:
                await self["xep_0199"].ping(domain, timeout=10)
                found["ping"] = True
            except Exception as e:
                found["ping"] = str(e)
            out(found)
            self.done.set_result(None)
        elif self.mode == "send":
            to, body = self.args[0], self.args[1]
            msg = self.make_message(mto=to, mbody=body, mtype="chat")
            msg.send()
            await asyncio.sleep(2)
            if not self.done.done():
                out({"ok": True})
                self.done.set_result(None)

    def on_watch_available(self, pres):
        if pres["from"].bare == self.args[0] and self.online_at is None:
            self.online_at = asyncio.get_event_loop().time()
            out({"online": True})

    def on_watch_unavailable(self, pres):
        if pres["from"].bare == self.args[0] and self.online_at is not None and not self.done.done():
            self.offline_at = asyncio.get_event_loop().time()
            self.done.set_result(None)

    def on_muc_presence(self, pres):
        room, nick = self.args[0], self.args[1]
        if pres["from"].bare != room:
            return
        x = pres.xml.find("{http://jabber.org/protocol/muc#user}x")
        codes = [] if x is None else [s.get("code") for s in x.findall("{http://jabber.org/protocol/muc#user}status")]
        if pres["type"] == "unavailable":
            self.left.append(pres["from"].resource)
            self.check_muc()
        elif "110" in codes and not self.joined:
            self.joined = True
            if "201" in codes:
                # A new room: accept the default configuration (an instant
                # room, XEP-0045 §10.1.2), which unlocks it for others.
                iq = self.make_iq_set(ito=room)
                q = ET.Element("{http://jabber.org/protocol/muc#owner}query")
                ET.SubElement(q, "{jabber:x:data}x", {"type": "submit"})
                iq.append(q)
                iq.send()
            out({"joined": True})
            if self.args[3] != "-":
                self.send_message(mto=room, mbody=self.args[3], mtype="groupchat")

    def on_groupchat(self, msg):
        nick = msg["from"].resource
        if nick != self.args[1] and msg["body"]:
            self.received.append({"from": nick, "body": msg["body"]})
            self.check_muc()

    def check_muc(self):
        wait_for = self.args[4]
        if self.received and (wait_for == "-" or wait_for in self.left) and not self.done.done():
            self.done.set_result(None)

    def on_available(self, pres):
        if self.mode == "friend" and pres["from"].bare == self.args[0]:
            self.saw = True
            self.check_friend()

    def on_roster(self, _iq):
        self.check_friend()

    def subscriptions(self):
        roster = self.client_roster
        return {j: roster[j]["subscription"] for j in roster if j != self.boundjid.bare}

    def check_friend(self):
        contact = self.args[0]
        if self.saw and self.subscriptions().get(contact) == "both" and not self.done.done():
            self.done.set_result(None)

    def on_stream_error(self, err):
        try:
            self.stream_error = err["condition"]
        except Exception:
            self.stream_error = "unknown"
        if not self.done.done():
            self.done.set_result(None)

    def on_message(self, msg):
        ev = msg.xml.find("{http://jabber.org/protocol/pubsub#event}event")
        if self.mode == "ps" and ev is not None:
            for e in ev.iter("{urn:example:news}entry"):
                self.received.append(e.text)
            if self.received and not self.done.done():
                self.done.set_result(None)
            return
        if self.mode == "muc" and msg["type"] == "groupchat":
            self.on_groupchat(msg)
            return
        if msg["type"] == "error":
            if self.mode == "send" and not self.done.done():
                out({"ok": False, "error": msg["error"]["condition"]})
                self.done.set_result(None)
            return
        if self.mode == "recv" and msg["body"]:
            delay = msg.xml.find("{urn:xmpp:delay}delay")
            self.received.append({
                "from": str(msg["from"]),
                "to": str(msg["to"]),
                "body": msg["body"],
                "delay": None if delay is None else delay.get("stamp"),
            })
            if len(self.received) >= int(self.args[0]) and not self.done.done():
                self.done.set_result(None)


async def main():
    mode, jid, password, host, port = sys.argv[1:6]
    args = sys.argv[6:]
    if mode == "recv" and len(args) > 3:
        jid = f"{jid}/{args[3]}"
    c = Client(jid, password, mode, args)
    if mode == "login" and args[:1] == ["direct-tls"]:
        c.enable_direct_tls = True
        c.enable_starttls = False
        c.enable_plaintext = False
    else:
        # The tests' ports speak STARTTLS: no direct-TLS attempt first.
        c.enable_direct_tls = False
    c.connect(host=host, port=int(port))
    timeout = float(args[1]) if mode in ("recv", "friend", "watch") else 20.0
    if mode == "muc":
        timeout = float(args[2])
    if mode == "ps":
        timeout = float(args[2])
    try:
        await asyncio.wait_for(c.done, timeout)
    except asyncio.TimeoutError:
        pass
    if c.failed is not None:
        out({"ok": False, "error": c.failed})
    elif mode == "recv":
        out({"messages": c.received, "stream_error": c.stream_error})
    elif mode == "friend":
        out({"saw": c.saw, "roster": c.subscriptions()})
    elif mode == "watch":
        out({"offline": c.offline_at is not None})
    elif mode == "muc":
        out({"messages": c.received, "left": c.left})
    elif mode == "ps" and args[0] == "sub":
        out({"items": c.received})
    elif mode == "unregister":
        out({"stream_error": c.stream_error})
    elif not c.done.done():
        out({"ok": False, "error": "timeout"})
    c.disconnect()
    await asyncio.sleep(0.2)


asyncio.run(main())
