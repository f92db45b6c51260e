// Package asyncapi describes eventfn's events for other teams: a JSON Schema
// of every event type, taken from its Go type, and an AsyncAPI 3.0 document of
// the topics, the messages on them and which handler receives or sends them.
package asyncapi

import (
	"encoding/json"
	"fmt"
	"sort"

	"github.com/invopop/jsonschema"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/router"
	"github.com/eventfn/eventfn/runtime"
)

// Schema is the JSON Schema of one event type's payload: its Go type's
// fields by their json tags; fields without omitempty are required; a
// jsonschema struct tag adds what it says (format=email, minLength=1, ...).
func Schema(spec runtime.EventSpec) (map[string]any, error) {
	r := &jsonschema.Reflector{DoNotReference: true, ExpandedStruct: true, AllowAdditionalProperties: true}
	s := r.Reflect(spec.Zero)
	raw, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("schema of %s: %w", spec.Type, err)
	}
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, fmt.Errorf("schema of %s: %w", spec.Type, err)
	}
	out["title"] = spec.Type
	return out, nil
}

// Schemas are the schemas of every event type, by type, each a standalone
// JSON Schema (draft 2020-12).
func Schemas(specs []runtime.EventSpec) (map[string]map[string]any, error) {
	out := make(map[string]map[string]any, len(specs))
	for _, spec := range specs {
		s, err := Schema(spec)
		if err != nil {
			return nil, err
		}
		out[spec.Type] = s
	}
	return out, nil
}

// Sender is a sender of events that is not a handler, such as the ingress.
type Sender struct {
	Name  string
	Sends []string
}

// Document is the AsyncAPI 3.0 document of the handlers, their events and the
// other senders, with topics named as cfg names them.
func Document(cfg configs.Config, infos []router.HandlerInfo, specs []runtime.EventSpec, others []Sender) ([]byte, error) {
	schemas, err := Schemas(specs)
	if err != nil {
		return nil, err
	}
	channels := map[string]any{}
	messages := map[string]any{}
	operations := map[string]any{}
	channelOf := func(typ string) (string, error) {
		if _, ok := schemas[typ]; !ok {
			return "", fmt.Errorf("event type %s has no Go type in handlers/ to describe it", typ)
		}
		if _, ok := channels[typ]; !ok {
			payload := schemas[typ]
			delete(payload, "$schema") // the message's schemaFormat says which
			delete(payload, "$id")
			messages[typ] = map[string]any{
				"name":          typ,
				"title":         typ,
				"contentType":   "application/json",
				"headers":       cloudEventsHeaders(typ),
				"payload":       payload,
				"correlationId": map[string]any{"$ref": "#/components/correlationIds/chain"},
				"bindings":      map[string]any{"kafka": map[string]any{"key": map[string]any{"type": "string", "description": "the event's key: events of one key are handled in order"}, "bindingVersion": "0.5.0"}},
			}
			channels[typ] = map[string]any{
				"address":     cfg.Kafka.Topic(typ),
				"description": "The Kafka topic of " + typ + " events (CloudEvents, binary mode).",
				"messages":    map[string]any{typ: map[string]any{"$ref": "#/components/messages/" + typ}},
			}
		}
		return typ, nil
	}
	op := func(id, action, typ, summary string) error {
		ch, err := channelOf(typ)
		if err != nil {
			return err
		}
		operations[id] = map[string]any{
			"action":   action,
			"summary":  summary,
			"channel":  map[string]any{"$ref": "#/channels/" + ch},
			"messages": []any{map[string]any{"$ref": "#/channels/" + ch + "/messages/" + typ}},
		}
		return nil
	}
	for _, h := range infos {
		if err := op(h.Name+".receive", "receive", h.Trigger, fmt.Sprintf("%s handles %s (consumer group %s).", h.Name, h.Trigger, h.Group)); err != nil {
			return nil, err
		}
		for _, e := range h.Emits {
			if err := op(h.Name+".send."+e, "send", e, fmt.Sprintf("%s emits %s, through the outbox, in the transaction of the %s it handles.", h.Name, e, h.Trigger)); err != nil {
				return nil, err
			}
		}
	}
	for _, s := range others {
		for _, e := range s.Sends {
			if err := op(s.Name+".send."+e, "send", e, fmt.Sprintf("%s sends %s, through the outbox.", s.Name, e)); err != nil {
				return nil, err
			}
		}
	}
	// Event types no one sends or receives are described all the same.
	types := make([]string, 0, len(schemas))
	for t := range schemas {
		types = append(types, t)
	}
	sort.Strings(types)
	for _, t := range types {
		if _, err := channelOf(t); err != nil {
			return nil, err
		}
	}
	doc := map[string]any{
		"asyncapi": "3.0.0",
		"info": map[string]any{
			"title":       "eventfn",
			"version":     "1.0.0",
			"description": "The events of this eventfn deployment: generated from handlers/ by `eventfn asyncapi` (go generate keeps docs/asyncapi.json current).",
		},
		"defaultContentType": "application/json",
		"channels":           channels,
		"operations":         operations,
		"components": map[string]any{
			"messages": messages,
			"correlationIds": map[string]any{
				"chain": map[string]any{
					"description": "Every event of one chain (an order's, say) carries the correlation id of the first.",
					"location":    "$message.header#/ce_correlationid",
				},
			},
		},
	}
	out, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

// cloudEventsHeaders is the schema of an event's Kafka headers: the
// CloudEvents attributes in binary mode.
func cloudEventsHeaders(typ string) map[string]any {
	str := func(desc string) map[string]any { return map[string]any{"type": "string", "description": desc} }
	return map[string]any{
		"type":     "object",
		"required": []string{"ce_id", "ce_type", "ce_source", "ce_specversion"},
		"properties": map[string]any{
			"ce_id":            str("The event's id; with ce_source, unique. The inbox keeps a redelivery from running a handler twice by it."),
			"ce_type":          map[string]any{"type": "string", "const": typ},
			"ce_source":        str("Who emitted it: eventfn/<handler>, eventfn/ingress, or another producer."),
			"ce_specversion":   map[string]any{"type": "string", "const": "1.0"},
			"ce_time":          map[string]any{"type": "string", "format": "date-time"},
			"content-type":     map[string]any{"type": "string", "const": "application/json"},
			"ce_correlationid": str("Shared by every event of one chain."),
			"ce_causationid":   str("The ce_id of the event whose handler emitted this one; absent on the first event of a chain."),
			"eventfn_chain_started": map[string]any{"type": "string", "format": "date-time",
				"description": "When the chain's first event was created; copied to every event of the chain."},
			"ce_traceparent": str("W3C trace context of the span that sent it (CloudEvents distributed-tracing extension)."),
			"ce_tracestate":  str("W3C trace state, with ce_traceparent."),
		},
	}
}
