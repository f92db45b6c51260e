# Builds the eventfn binary and ships it alone in a distroless image.
FROM golang:1.26.8-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/eventfn .

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/eventfn /eventfn
ENV EVENTFN_PROFILE=compose EVENTFN_DATA_DIR=/tmp/eventfn
EXPOSE 8080
USER nonroot:nonroot
ENTRYPOINT ["/eventfn"]
